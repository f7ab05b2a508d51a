"""``boxsup predict``: a label map (and optionally an overlay) for every image, in batches.

Images are batched by size, never padded: a padded border would change what the network sees near
the image edge, so a batch gives exactly the label maps the images would get one by one. An image
that cannot be read is logged, counted and named in the report; the others are still written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from boxsup.data.images import picture_size, read_rgb
from boxsup.errors import BoxSupError
from boxsup.evaluation.inference import predict_label_maps
from boxsup.models import on_device
from boxsup.serving.image_inputs import output_names
from boxsup.serving.label_files import write_label_png, write_overlay
from boxsup.serving.trained_model import TrainedModel, pick_device
from boxsup.utils.text import plural

log = logging.getLogger(__name__)

OVERLAY_DIR = "overlay"


@dataclass
class PredictReport:
    """What a prediction run wrote, and which images it could not read (path, why)."""

    out: Path
    written: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        """In words: ``<out>: 1 label map written, 2 unreadable images (a.jpg, b.tif)``."""
        line = f"{self.out}: {plural(self.written, 'label map')} written, {plural(len(self.unreadable), 'unreadable image')}"
        if self.unreadable:
            line += " (" + ", ".join(str(path) for path, _ in self.unreadable) + ")"
        return line


def predict_images(
    model: TrainedModel,
    paths: Sequence[Path],
    out: Path,
    scales: Sequence[float],
    crf: bool,
    batch_size: int = 8,
    overlays: str | None = None,
    progress: bool = True,
) -> PredictReport:
    """Write ``<out>/<stem>.png`` for every readable image, and ``<out>/overlay/<stem>.<overlays>``
    (``jpg`` or ``png``) when ``overlays`` is given; returns the report."""
    if batch_size < 1:
        raise BoxSupError(f"--batch-size: must be at least 1, got {batch_size}")
    targets = output_names(paths, out)
    report = PredictReport(out)
    device = pick_device()
    network = on_device(model.network, device)
    batches = _size_batches(paths, batch_size, report)
    with logging_redirect_tqdm(), tqdm(total=sum(map(len, batches)), desc="predict", unit="img",
                                       disable=not progress) as bar:
        for batch in batches:
            decoded = [(i, image) for i in batch if (image := _read(paths[i], report)) is not None]
            for members in _same_shape(decoded):
                maps = predict_label_maps(network, [image for _, image in members], scales, crf, device,
                                          model.crf_params)
                for (i, image), label_map in zip(members, maps):
                    write_label_png(targets[i], label_map)
                    if overlays:
                        write_overlay(out / OVERLAY_DIR / f"{paths[i].stem}.{overlays}", image, label_map)
                    report.written += 1
            bar.update(len(batch))
    return report


def _size_batches(paths: Sequence[Path], batch_size: int, report: PredictReport) -> list[list[int]]:
    """Indices of ``paths`` in batches of one picture size (read from the headers), input order kept."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, path in enumerate(paths):
        try:
            by_size.setdefault(picture_size(path), []).append(i)
        except BoxSupError as exc:
            _count_unreadable(path, exc, report)
    return [group[j : j + batch_size] for group in by_size.values() for j in range(0, len(group), batch_size)]


def _read(path: Path, report: PredictReport) -> np.ndarray | None:
    try:
        return read_rgb(path)
    except BoxSupError as exc:  # a header that read but pixel data that does not
        _count_unreadable(path, exc, report)
        return None


def _count_unreadable(path: Path, exc: BoxSupError, report: PredictReport) -> None:
    log.warning("skipped unreadable image %s", exc)
    report.unreadable.append((path, str(exc)))


def _same_shape(decoded: list[tuple[int, np.ndarray]]) -> list[list[tuple[int, np.ndarray]]]:
    """The decoded images split by actual shape (a header that lied about its size gets its own batch)."""
    groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for item in decoded:
        groups.setdefault(item[1].shape, []).append(item)
    return list(groups.values())
