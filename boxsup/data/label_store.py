"""LabelStore: each round's label maps, one palette PNG per image, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from boxsup.data.voc import voc_palette
from boxsup.errors import BoxSupError
from boxsup.utils.files import atomic_path


class LabelStore:
    """``ROOT/round_RRR/<image id>.png``: the training targets of round RRR."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, round_index: int, image_id: str) -> Path:
        return self.root / f"round_{round_index:03d}" / f"{image_id}.png"

    def write(self, round_index: int, image_id: str, label_map: np.ndarray) -> None:
        png = Image.fromarray(np.ascontiguousarray(label_map, dtype=np.uint8), mode="P")
        png.putpalette(voc_palette())
        with atomic_path(self.path(round_index, image_id), suffix=".png") as tmp:
            png.save(tmp, format="PNG", compress_level=1)  # fast; label maps compress well anyway

    def read(self, round_index: int, image_id: str) -> np.ndarray:
        path = self.path(round_index, image_id)
        if not path.is_file():
            raise BoxSupError(f"{path}: label map missing")
        with Image.open(path) as im:
            return np.asarray(im).astype(np.uint8)

    def rounds(self, up_to: int) -> list[int]:
        """The rounds that have a directory here, up to and including ``up_to``."""
        found = (int(p.name.split("_")[1]) for p in self.root.glob("round_*") if p.name.split("_")[1].isdigit())
        return sorted(r for r in found if r <= up_to)

    def has(self, round_index: int, image_id: str) -> bool:
        return self.path(round_index, image_id).is_file()
