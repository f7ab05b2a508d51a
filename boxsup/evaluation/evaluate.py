"""Evaluating a network on a labelled split, from a live model or a saved checkpoint."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from boxsup.config import read_class_file
from boxsup.data.dataset import SegmentationDataset
from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.evaluation.inference import predict_label_map
from boxsup.evaluation.metrics import ConfusionMatrix, SegmentationScores
from boxsup.models import BACKBONES, fit_problem, load_tensor_file, model_from_config, on_device
from boxsup.utils.storage import read_file


def evaluate(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
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
        if prediction.shape != mask.shape:
            raise BoxSupError(f"{dataset.mask_path(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                              f"(and its prediction) is {prediction.shape[1]}x{prediction.shape[0]}")
        confusion.update(prediction, mask)
    return confusion


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A saved ``checkpoint.pt``, from a local path or a URI (``s3://bucket/runs/<run>/checkpoint.pt``).

    Read with torch's weights-only unpickler, so nothing in the file can run code; a file that needs
    more, or that lacks what ``boxsup train`` writes (model, classes, config), is refused.
    """
    try:
        data = read_file(path)
    except (FileNotFoundError, IsADirectoryError):
        raise BoxSupError(f"{path}: checkpoint not found") from None
    state = load_tensor_file(io.BytesIO(data), str(path), "checkpoint")
    if not _is_checkpoint(state):
        raise BoxSupError(f"{path}: not a boxsup checkpoint: it must hold 'model' (a state dict), 'classes' (names) and "
                          "'config' (with model.backbone), as the checkpoint.pt written by `boxsup train` does")
    return state


def _is_checkpoint(state: Any) -> bool:
    """Whether ``state`` holds what ``boxsup train`` saves: a state dict, the class names and the config."""
    if not isinstance(state, dict) or not all(k in state for k in ("model", "classes", "config")):
        return False
    weights, classes, config = state["model"], state["classes"], state["config"]
    return (isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())
            and isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes)
            and isinstance(config, dict) and isinstance(config.get("model"), dict)
            and config["model"].get("backbone") in BACKBONES)


def _check_dataset_classes(checkpoint: str | Path, classes: tuple[str, ...], root: Path) -> None:
    """A dataset with a ``classes.txt`` must list the classes the model was trained for, in the same order."""
    class_file = root / "classes.txt"
    listed = read_class_file(class_file) if class_file.is_file() else classes
    if listed != classes:
        raise BoxSupError(f"{checkpoint}: the model was trained for classes {', '.join(classes)} but {class_file} "
                          f"lists {', '.join(listed)}")


def evaluate_checkpoint(
    checkpoint: str | Path, root: str | Path, split: str, scales: tuple[float, ...] = (1.0,), crf: bool = False
) -> tuple[SegmentationScores, list[str]]:
    """Scores of a saved model on ``root``'s ``split``; the class list comes from the checkpoint.

    A dataset with a ``classes.txt`` must list the same classes.
    """
    state = load_checkpoint(checkpoint)
    classes = tuple(state["classes"])
    _check_dataset_classes(checkpoint, classes, Path(root))
    dataset = VOCDataset(root, split, classes)
    backbone = state["config"]["model"]["backbone"]
    model = model_from_config(state["config"]["model"], dataset.num_classes, "none")
    problem = fit_problem(model, state["model"])
    if problem is not None:
        raise BoxSupError(f"{checkpoint}: its weights do not fit a {backbone} model for {len(classes)} classes: {problem}")
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    confusion = evaluate(on_device(model, device), dataset, device, scales, crf)
    return confusion.compute(), ["background", *classes]
