"""Evaluating a network on a labelled split, from a live model or a saved checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from tqdm import tqdm

from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.evaluation.inference import predict_label_map
from boxsup.evaluation.metrics import ConfusionMatrix, SegmentationScores
from boxsup.models import build_model
from boxsup.utils.storage import read_file


def evaluate(
    model: torch.nn.Module,
    dataset: VOCDataset,
    device: torch.device,
    scales: tuple[float, ...] = (1.0,),
    crf: bool = False,
    progress: bool = True,
    ids: list[str] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of the model's predictions against the GT masks of ``dataset`` (or ``ids``).

    Images without a mask cannot be scored and are left out.
    """
    confusion = ConfusionMatrix(dataset.num_classes)
    for image_id in tqdm(dataset.ids if ids is None else ids, desc="eval", leave=False, disable=not progress, unit="img"):
        mask = dataset.mask(image_id)
        if mask is None:
            continue
        prediction = predict_label_map(model, dataset.image(image_id), scales=scales, crf=crf, device=device)
        confusion.update(prediction, mask)
    return confusion


def load_checkpoint(path: str | Path) -> dict:
    """A saved ``checkpoint.pt``, from a local path or a URI (``s3://bucket/runs/<run>/checkpoint.pt``)."""
    try:
        data = read_file(path)
    except (FileNotFoundError, IsADirectoryError):
        raise BoxSupError(f"{path}: checkpoint not found") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise BoxSupError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def evaluate_checkpoint(
    checkpoint: str | Path, root: str | Path, split: str, scales: tuple[float, ...] = (1.0,), crf: bool = False
) -> tuple[SegmentationScores, list[str]]:
    """Scores of a saved model on ``root``'s ``split``; the class list comes from the checkpoint."""
    state = load_checkpoint(checkpoint)
    classes = state["classes"]
    dataset = VOCDataset(root, split, classes)
    model = build_model(state["config"]["model"]["backbone"], dataset.num_classes, "none")
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    confusion = evaluate(model.to(device), dataset, device, scales, crf)
    return confusion.compute(), ["background", *classes]
