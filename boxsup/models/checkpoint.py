"""The ``checkpoint.pt`` that ``boxsup train`` writes: read safely, and turned back into its network."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boxsup.errors import BoxSupError
from boxsup.models.fcn import BACKBONES, fit_problem, load_tensor_file, model_from_config
from boxsup.utils.storage import read_file


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
    if bad := non_finite_names(state["model"]):
        raise BoxSupError(f"{path}: {len(bad)} of {len(state['model'])} weight tensors hold NaN or infinite values "
                          f"(e.g. {bad[0]}): the run that wrote it diverged; retrain with a lower train.lr")
    return state


def non_finite_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of ``state``'s floating-point tensors that hold a NaN or an infinity (one device sync)."""
    names = [name for name, tensor in state.items() if tensor.is_floating_point()]
    if not names:
        return []
    flags = torch.stack([~torch.isfinite(state[name]).all() for name in names]).tolist()
    return [name for name, bad in zip(names, flags) if bad]


def _is_checkpoint(state: Any) -> bool:
    """Whether ``state`` holds what ``boxsup train`` saves: a state dict, the class names and the config."""
    if not isinstance(state, dict) or not all(k in state for k in ("model", "classes", "config")):
        return False
    weights, classes, config = state["model"], state["classes"], state["config"]
    return (isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())
            and isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes)
            and isinstance(config, dict) and isinstance(config.get("model"), dict)
            and config["model"].get("backbone") in BACKBONES)


def network_from_checkpoint(state: dict[str, Any], source: str) -> nn.Module:
    """The network a loaded checkpoint describes (backbone and output stride from its config), its
    weights in place, in eval mode; weights that do not fit are one line naming ``source``."""
    classes = state["classes"]
    model_cfg = state["config"]["model"]
    network = model_from_config(model_cfg, len(classes) + 1, "none")
    problem = fit_problem(network, state["model"])
    if problem is not None:
        raise BoxSupError(f"{source}: its weights do not fit a {model_cfg['backbone']} model for {len(classes)} "
                          f"classes: {problem}")
    network.load_state_dict(state["model"])
    return network.eval()
