"""LabelStore: each round's label maps, one palette PNG per image, written atomically.

The root is a local directory or a URI (``s3://bucket/run/labels``; see ``boxsup.utils.storage``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from boxsup.data.voc import voc_palette
from boxsup.errors import BoxSupError
from boxsup.utils.storage import join, open_location


def _key(round_index: int, image_id: str) -> str:
    return f"round_{round_index:03d}/{image_id}.png"


class LabelStore:
    """``ROOT/round_RRR/<image id>.png``: the training targets of round RRR."""

    def __init__(self, root: str | os.PathLike):
        self.location = open_location(root)
        self.root = self.location.root

    def path(self, round_index: int, image_id: str) -> Path | str:
        return self.location.path(_key(round_index, image_id))

    def write(self, round_index: int, image_id: str, label_map: np.ndarray) -> None:
        png = Image.fromarray(np.ascontiguousarray(label_map, dtype=np.uint8), mode="P")
        png.putpalette(voc_palette())
        buffer = io.BytesIO()
        png.save(buffer, format="PNG", compress_level=1)  # fast; label maps compress well anyway
        self.location.write_bytes(_key(round_index, image_id), buffer.getvalue())

    def read(self, round_index: int, image_id: str) -> np.ndarray:
        try:
            data = self.location.read_bytes(_key(round_index, image_id))
        except FileNotFoundError:
            raise BoxSupError(f"{self.path(round_index, image_id)}: label map missing") from None
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im).astype(np.uint8)

    def rounds(self, up_to: int) -> list[int]:
        """The rounds that have a directory here, up to and including ``up_to``."""
        found = (int(name.split("_")[1]) for name in self.location.list() if name.startswith("round_") and name.split("_")[1].isdigit())
        return sorted(r for r in found if r <= up_to)

    def has(self, round_index: int, image_id: str) -> bool:
        return self.location.exists(_key(round_index, image_id))

    def remove_round(self, round_index: int) -> None:
        """Delete every label map of one round (``boxsup.trainers.settings.LabelSchedule`` says when)."""
        open_location(join(str(self.root), f"round_{round_index:03d}")).remove_all()
