"""Grid search of the dense CRF's parameters on a held-out split, as DeepLab cross-validated them.

The network runs once per image; its probabilities are then refined with every grid point's CRF
and scored into that point's confusion matrix, so nothing larger than one image's probabilities is
kept. Optionally the CRF runs in worker processes (one image's whole grid per task).
"""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import yaml

from boxsup.errors import BoxSupError
from boxsup.evaluation.crf import CONFIG_KEY, CRFParams, dense_crf
from boxsup.evaluation.metrics import ConfusionMatrix, SegmentationScores
from boxsup.utils.progress import progress_bar

if TYPE_CHECKING:
    from boxsup.evaluation.evaluate import CheckpointModel

# DeepLab fixed the Gaussian kernel (w2 = 3, std 3) and searched w1, theta_alpha, theta_beta; this
# coarse grid brackets its published VOC values (4, 121, 5). Keys not in the grid keep the checkpoint's.
DEFAULT_GRID: dict[str, list[float]] = {
    "bi_w": [3.0, 4.0, 5.0], "bi_xy_std": [50.0, 80.0, 121.0], "bi_rgb_std": [3.0, 5.0, 10.0],
}

PARAM_NAMES = tuple(f.name for f in fields(CRFParams))
_PREFIX = f"{CONFIG_KEY}."


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["bi_w=3,4,5", "iterations=5,10"]`` -> ``{"bi_w": [3.0, 4.0, 5.0], "iterations": [5, 10]}``.

    Names are ``eval.crf_params`` keys (the prefix may be given); every value is read as YAML and checked
    as that config key would be (``CRFParams.checked``). A name given twice, or without values, is a
    one-line error.
    """
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        source = f"--grid {spec}"
        if "=" not in spec:
            raise BoxSupError(f"{source}: expected NAME=V1,V2,... with NAME one of {', '.join(PARAM_NAMES)}")
        name, raw = spec.split("=", 1)
        name = name.strip().removeprefix(_PREFIX)
        if name not in PARAM_NAMES:
            raise BoxSupError(f"{source}: {name!r} is not a CRF parameter; use {', '.join(PARAM_NAMES)}")
        if name in grid:
            raise BoxSupError(f"{source}: {name} is given twice")
        values: list[Any] = []
        for text in (part.strip() for part in raw.split(",")):
            if not text:
                raise BoxSupError(f"{source}: an empty value; write NAME=V1,V2,...")
            if (value := CRFParams.checked(name, _yaml_value(f"{name}={text}", text), source)) not in values:
                values.append(value)
        grid[name] = values
    return grid


def _yaml_value(spec: str, text: str) -> Any:
    """One grid value read as YAML (as ``--set`` reads its values: ``1e-3`` stays a string for the check)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise BoxSupError(f"--set {spec!r}: value is not valid YAML") from None


def grid_points(base: CRFParams, grid: dict[str, list[Any]]) -> list[CRFParams]:
    """Every combination of the grid's values; parameters outside the grid keep ``base``'s value."""
    names = list(grid)
    return [replace(base, **dict(zip(names, combo))) for combo in itertools.product(*(grid[n] for n in names))]


@dataclass
class CRFSearchResult:
    """Scores per grid point, best first, with the score of the network alone (no CRF)."""

    ranked: list[tuple[CRFParams, SegmentationScores]]
    without_crf: SegmentationScores
    images: int

    @property
    def best(self) -> CRFParams:
        return self.ranked[0][0]


def score_grid(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    points: Sequence[CRFParams],
    num_classes: int,
    workers: int = 1,
    progress: bool = True,
    total: int | None = None,
) -> CRFSearchResult:
    """Score every CRF setting of ``points`` on ``samples`` (image uint8 (H, W, 3), probabilities (C, H, W),
    GT mask (H, W)); ``workers`` > 1 runs the CRF in that many processes."""
    if not points:
        raise BoxSupError("crf search: the grid has no points")
    matrices = [ConfusionMatrix(num_classes) for _ in points]
    plain = ConfusionMatrix(num_classes)
    images = 0
    bar = progress_bar(total=None if total is None else total * len(points), desc="crf search", unit="crf",
                       enabled=progress, leave=False)
    with bar:
        for plain_matrix, point_matrices in _scored(samples, points, num_classes, workers):
            plain.matrix += plain_matrix
            for confusion, matrix in zip(matrices, point_matrices):
                confusion.matrix += matrix
            images += 1
            bar.update(len(points))
    if images == 0:
        raise BoxSupError("crf search: no image of the split has a GT mask to score")
    ranked = sorted(((p, m.compute()) for p, m in zip(points, matrices)), key=lambda item: -item[1].miou)
    return CRFSearchResult(ranked, plain.compute(), images)


def _scored(samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], points: Sequence[CRFParams], num_classes: int,
            workers: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Per sample: the confusion matrix of the network alone and one per grid point, in sample order."""
    if workers <= 1:
        for image, probs, mask in samples:
            yield _score_image(image, probs, mask, points, num_classes)
        return
    # spawn: a forked copy of a process that has started torch's threads may hang
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: list[Future] = []
        for image, probs, mask in samples:
            pending.append(pool.submit(_score_image, image, probs, mask, points, num_classes))
            while len(pending) > 2 * workers:  # bounded: a few images' probabilities in flight, not the split's
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _score_image(image: np.ndarray, probs: np.ndarray, mask: np.ndarray, points: Sequence[CRFParams],
                 num_classes: int) -> tuple[np.ndarray, list[np.ndarray]]:
    plain = ConfusionMatrix(num_classes)
    plain.update(probs.argmax(0), mask)
    matrices = []
    for params in points:
        confusion = ConfusionMatrix(num_classes)
        confusion.update(dense_crf(image, probs, params).argmax(0), mask)
        matrices.append(confusion.matrix)
    return plain.matrix, matrices


def search_checkpoint(
    loaded: CheckpointModel,
    grid: dict[str, list[Any]] | None = None,
    scales: tuple[float, ...] = (1.0,),
    max_images: int | None = None,
    workers: int = 1,
    progress: bool = True,
) -> CRFSearchResult:
    """Grid-search the CRF for a loaded checkpoint on its split (the first ``max_images`` images with a mask).

    ``grid`` defaults to :data:`DEFAULT_GRID`; parameters outside it keep the checkpoint's settings.
    """
    from boxsup.evaluation.evaluate import check_prediction_size
    from boxsup.evaluation.inference import predict_probs

    dataset = loaded.dataset
    points = grid_points(loaded.crf_params, DEFAULT_GRID if grid is None else grid)
    def samples() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        masks = ((image_id, dataset.mask(image_id)) for image_id in dataset.ids)
        for image_id, mask in itertools.islice(((i, m) for i, m in masks if m is not None), max_images):
            image = dataset.image(image_id)
            probs = predict_probs(loaded.model, image, scales, loaded.device)
            check_prediction_size(dataset, image_id, probs.shape, mask)
            yield image, probs, mask

    total = len(dataset.ids) if max_images is None else min(max_images, len(dataset.ids))
    return score_grid(samples(), points, dataset.num_classes, workers, progress, total=total)


def format_search(result: CRFSearchResult, title: str) -> str:
    """The table of every grid point, best first, then the best as ``--set`` flags and as YAML."""
    header = f"{'rank':>4}  {'mIoU':>6}  " + "  ".join(f"{name:>10}" for name in PARAM_NAMES)
    lines = [f"{title}: {result.images} image{'' if result.images == 1 else 's'}, {len(result.ranked)} grid points; "
             f"without CRF mIoU {result.without_crf.miou:.4f}", header]
    for rank, (params, scores) in enumerate(result.ranked, 1):
        values = "  ".join(f"{value:>10g}" for value in params.settings().values())
        lines.append(f"{rank:>4}  {scores.miou:.4f}  {values}")
    best = result.best.settings()
    lines += ["best, as flags (boxsup eval / boxsup train):",
              "  --set " + " ".join(f"{_PREFIX}{k}={v:g}" for k, v in best.items()),
              "best, as YAML for a run config:", "eval:", "  crf_params:"]
    lines += [f"    {k}: {v:g}" for k, v in best.items()]
    return "\n".join(lines)
