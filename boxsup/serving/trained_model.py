"""A trained network from wherever it was saved: a ``checkpoint.pt`` (path or URI) or an MLflow model.

Every way in reads the same file, ``checkpoint.pt`` (state dict, class names, run config), with
torch's weights-only unpickler and rebuilds the network from the config's ``model.backbone``:
nothing in a model file can run code. This is the one place a saved model is opened:
``boxsup eval``, ``predict``, ``export`` and the MLflow model all come through ``read_checkpoint``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boxsup.errors import BoxSupError
from boxsup.evaluation.crf import CRFParams
from boxsup.models.checkpoint import load_checkpoint, network_from_checkpoint

MLFLOW_SCHEMES = ("runs:/", "models:/")  # model URIs resolved through the MLflow tracking store
LOADER_MODULE = "boxsup.serving.mlflow_model"  # the pyfunc loader of every boxsup MLflow model


@dataclass
class TrainedModel:
    """A network in eval mode on the CPU, with the class names it predicts (ids 1..C; 0 is background)."""

    network: nn.Module
    classes: tuple[str, ...]
    config: dict[str, Any]
    source: str

    @property
    def names(self) -> list[str]:
        """Label-map value -> name: ``background``, then the classes."""
        return ["background", *self.classes]

    @property
    def eval_scales(self) -> tuple[float, ...]:
        """The test-time scales the run was evaluated with (``eval.scales``)."""
        return tuple(float(s) for s in self.config.get("eval", {}).get("scales", [1.0]))

    @property
    def eval_crf(self) -> bool:
        """Whether the run was evaluated with the dense CRF (``eval.crf``)."""
        return bool(self.config.get("eval", {}).get("crf", False))

    @property
    def crf_params(self) -> CRFParams:
        """The run's dense-CRF settings (``eval.crf_params``; DeepLab's where an older run has none)."""
        return CRFParams.of_config(self.config, source=f"{self.source} (its config)")


def model_from_checkpoint(state: dict[str, Any], source: str) -> TrainedModel:
    """The network a loaded checkpoint describes, its weights in place; a mismatch is one line."""
    return TrainedModel(network_from_checkpoint(state, source), tuple(state["classes"]), state["config"], source)


def load_trained_model(source: str | Path, tracking_uri: str | None = None) -> TrainedModel:
    """The model in ``source`` (any of :func:`read_checkpoint`'s), its network built."""
    return model_from_checkpoint(read_checkpoint(source, tracking_uri), str(source))


def read_checkpoint(source: str | Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """The checkpoint (``model``, ``classes``, ``config``; see ``boxsup.models.checkpoint.load_checkpoint``) in
    ``source``: a checkpoint path or URI, ``runs:/<run id>/model`` (or a run's checkpoint artifact),
    ``models:/NAME/VERSION``, or a folder holding a downloaded boxsup MLflow model. The network is not
    built yet (``model_from_checkpoint``), so a caller can check the classes first.

    ``tracking_uri`` is the MLflow store that ``runs:/`` and ``models:/`` URIs are looked up in.
    """
    text = str(source)
    if text.startswith(MLFLOW_SCHEMES):
        with tempfile.TemporaryDirectory() as tmp:
            local = _download_model(text, tracking_uri, Path(tmp))
            if local.is_file():  # a run's checkpoint artifact: runs:/<id>/checkpoint/checkpoint.pt
                return load_checkpoint(local)
            return load_checkpoint(model_checkpoint_file(local, text))
    if Path(text).is_dir() and (Path(text) / "MLmodel").is_file():
        return load_checkpoint(model_checkpoint_file(Path(text), text))
    return load_checkpoint(text)


def model_checkpoint_file(folder: Path, source: str) -> Path:
    """The ``checkpoint.pt`` inside a boxsup MLflow model folder; anything else is refused in one line."""
    from mlflow.models import Model

    try:
        flavor = Model.load(str(folder)).flavors.get("python_function", {})
    except Exception as exc:  # a broken MLmodel file: yaml or MLflow errors alike
        raise BoxSupError(f"{source}: cannot read its MLmodel file ({type(exc).__name__})") from None
    if flavor.get("loader_module") != LOADER_MODULE or not flavor.get("data"):
        raise BoxSupError(f"{source}: not a boxsup MLflow model (its python_function loader is "
                          f"{flavor.get('loader_module')!r}, not {LOADER_MODULE})")
    return folder / flavor["data"]


def _download_model(uri: str, tracking_uri: str | None, into: Path) -> Path:
    """The MLflow model at ``uri`` downloaded into ``into``; an unknown run or store is one line."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    if tracking_uri and tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise BoxSupError(f"{uri}: no MLflow store at {tracking_uri}; give --tracking-uri (or MLFLOW_TRACKING_URI)")
    try:
        with mlflow_store(tracking_uri):  # MLflow resolves a run's logged model through its global URI
            return Path(download_artifacts(artifact_uri=uri, dst_path=str(into), tracking_uri=tracking_uri))
    except (MlflowException, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BoxSupError(f"{uri}: cannot fetch the model from {tracking_uri or 'MLflow'} ({first})") from None


@contextmanager
def mlflow_store(tracking_uri: str | None) -> Iterator[None]:
    """MLflow's global tracking URI set to ``tracking_uri`` for the block (None: left as it is), then restored.

    Parts of MLflow (logging a model, resolving ``runs:/`` to a logged model) read only the global URI.
    """
    if tracking_uri is None:
        yield
        return
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # no public scoped form exists

    with _use_tracking_uri(tracking_uri):
        yield


def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
