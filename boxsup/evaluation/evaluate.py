"""Evaluating a network on a labelled split, from a live model or a saved checkpoint.

A checkpoint comes in read (``boxsup.serving.trained_model.read_checkpoint``: a path, a URI or an
MLflow model), with its CRF settings; a run config comes in loaded. Nothing here opens either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from boxsup.data.classes import read_class_file
from boxsup.data.dataset import SegmentationDataset
from boxsup.data.sources import open_source, resolve_classes, source_specs
from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.evaluation.crf import CRFParams
from boxsup.evaluation.inference import predict_label_map
from boxsup.evaluation.metrics import ConfusionMatrix, SegmentationScores
from boxsup.evaluation.trimap import TrimapConfusion
from boxsup.models import on_device
from boxsup.models.checkpoint import network_from_checkpoint
from boxsup.utils.progress import progress_bar


def evaluate(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    device: torch.device,
    scales: tuple[float, ...] = (1.0,),
    crf: bool = False,
    progress: bool = True,
    ids: list[str] | None = None,
    crf_params: CRFParams | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of the model's predictions against the GT masks of ``dataset`` (or ``ids``).

    An image without a mask is refused in one line: a score over fewer images would be a wrong result.
    """
    confusion = ConfusionMatrix(dataset.num_classes)
    for prediction, mask in _predictions(model, dataset, device, scales, crf, crf_params, progress, ids):
        confusion.update(prediction, mask)
    return confusion


def evaluate_trimap(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    device: torch.device,
    widths: Sequence[int],
    scales: tuple[float, ...] = (1.0,),
    crf: bool = False,
    crf_params: CRFParams | None = None,
    progress: bool = True,
) -> tuple[ConfusionMatrix, TrimapConfusion]:
    """Like :func:`evaluate`, plus boundary/interior confusion matrices for every band width in ``widths``,
    all scored from each image's one prediction."""
    confusion = ConfusionMatrix(dataset.num_classes)
    trimap = TrimapConfusion(dataset.num_classes, widths)
    for prediction, mask in _predictions(model, dataset, device, scales, crf, crf_params, progress, None):
        confusion.update(prediction, mask)
        trimap.update(prediction, mask)
    return confusion, trimap


def _predictions(
    model: torch.nn.Module, dataset: SegmentationDataset, device: torch.device, scales: tuple[float, ...], crf: bool,
    crf_params: CRFParams | None, progress: bool, ids: list[str] | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(prediction, GT mask) of every image of ``ids`` (default: the split); each must have a mask."""
    for image_id in progress_bar(dataset.ids if ids is None else ids, desc="eval", leave=False, enabled=progress, unit="img"):
        mask = dataset.mask(image_id)
        if mask is None:
            raise dataset.missing_mask(image_id)
        prediction = predict_label_map(model, dataset.image(image_id), scales=scales, crf=crf, device=device,
                                       crf_params=crf_params)
        check_prediction_size(dataset, image_id, prediction.shape, mask)
        yield prediction, mask


def check_prediction_size(dataset: SegmentationDataset, image_id: str, shape: tuple[int, ...], mask: np.ndarray) -> None:
    """A mask of another size than its image (hence the prediction) is the dataset's fault: one line naming it."""
    if shape[-2:] != mask.shape:
        raise BoxSupError(f"{dataset.mask_location(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                          f"(and its prediction) is {shape[-1]}x{shape[-2]}")


def _check_dataset_classes(checkpoint: str | Path, classes: tuple[str, ...], root: Path) -> None:
    """A dataset with a ``classes.txt`` must list the classes the model was trained for, in the same order."""
    class_file = root / "classes.txt"
    listed = read_class_file(class_file) if class_file.is_file() else classes
    if listed != classes:
        raise BoxSupError(f"{checkpoint}: the model was trained for classes {', '.join(classes)} but {class_file} "
                          f"lists {', '.join(listed)}")


@dataclass
class CheckpointModel:
    """A saved model ready to evaluate on a split: its network, the dataset, and its CRF settings."""

    path: str
    model: torch.nn.Module
    dataset: SegmentationDataset
    device: torch.device
    crf_params: CRFParams

    @property
    def class_names(self) -> list[str]:
        return ["background", *self.dataset.classes]


@dataclass(frozen=True)
class EvalData:
    """The labelled split a saved model is scored on: ``root``'s ``split`` in the VOC layout, or the
    ``data.val`` source of the loaded run config ``config`` (any format: COCO, SBD, PASCAL-CONTEXT...),
    which messages call ``config_name`` (its file)."""

    root: str | Path | None = None
    split: str = "val"
    config: dict[str, Any] | None = None
    config_name: str = "the config"

    def describe(self) -> dict[str, Any]:
        """The split as ``boxsup eval --out`` records it: ``root`` and ``split``, or the config's file and its
        ``data.val`` source (paths as given)."""
        if self.config is None:
            return {"root": str(self.root), "split": self.split}
        return {"config": self.config_name, "val": asdict(source_specs(self.config["data"])[1])}

    def open(self, checkpoint: str | Path, classes: tuple[str, ...]) -> SegmentationDataset:
        """The split's reader for a model trained on ``classes``, its annotations checked as a run checks its
        validation set (every image readable, of its annotation's size, with a mask); each problem one line."""
        dataset = self._reader(checkpoint, classes)
        dataset.load_annotations(skip_bad=False)
        return dataset

    def _reader(self, checkpoint: str | Path, classes: tuple[str, ...]) -> SegmentationDataset:
        """The split's reader; a class list that differs from ``classes`` is one line."""
        if self.config is None:
            assert self.root is not None, "EvalData takes a root or a config"
            _check_dataset_classes(checkpoint, classes, Path(self.root))
            dataset = VOCDataset(self.root, self.split, classes)
            dataset.scored = True
            return dataset
        configured = resolve_classes(self.config)
        if configured != classes:
            raise BoxSupError(f"{checkpoint}: the model was trained for classes {', '.join(classes)} but "
                              f"{self.config_name} resolves to {', '.join(configured)}")
        return open_source(source_specs(self.config["data"])[1], classes, scored=True)


def scores_record(scores: SegmentationScores, class_names: Sequence[str]) -> dict[str, Any]:
    """``scores`` as JSON-ready values: ``miou``, ``pixel_accuracy`` and ``class_iou`` by class name (None for a
    class absent from both the predictions and the masks, whose IoU is undefined)."""
    return {"miou": float(scores.miou), "pixel_accuracy": float(scores.pixel_accuracy),
            "class_iou": {name: float(iou) if np.isfinite(iou) else None
                          for name, iou in zip(class_names, scores.class_iou)}}


def checkpoint_model(state: dict[str, Any], source: str, data: EvalData, crf_params: CRFParams) -> CheckpointModel:
    """A read checkpoint ``state`` (``source`` names it) ready to score on the split ``data`` names, with
    ``crf_params``. The class list comes from the checkpoint; a dataset with a ``classes.txt`` (or a
    config) must give the same classes, which is checked before the network is built from the state."""
    dataset = data.open(source, tuple(state["classes"]))
    model = network_from_checkpoint(state, source)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return CheckpointModel(source, on_device(model, device), dataset, device, crf_params)


def checkpoint_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short names for checkpoints in tables and figures: the run directory of a ``checkpoint.pt``, else the
    file's stem; names that would repeat get their position appended."""
    names = []
    for path in paths:
        pure = PurePosixPath(str(path).rstrip("/"))  # a local path or a URI (s3://bucket/runs/<run>/checkpoint.pt)
        names.append((pure.parent.name or pure.stem) if pure.name == "checkpoint.pt" else pure.stem)
    return [f"{name} ({i + 1})" if names.count(name) > 1 else name for i, name in enumerate(names)]
