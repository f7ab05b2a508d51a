"""A run's network as an MLflow model (``runs:/<run id>/model``), loadable with ``mlflow.pyfunc.load_model``.

The model is a pyfunc with this module as its loader (``loader_module``) and the run's
``checkpoint.pt`` as its data: loading reads the checkpoint with torch's weights-only unpickler and
rebuilds the network, so no pickled Python object is ever loaded (no ``python_model.pkl``). The data
is the run's one copy of its checkpoint in MLflow (``runs:/<run id>/model/data/checkpoint.pt``).

The model is self-contained: the ``boxsup`` package travels in it as code (``code_paths``: MLflow puts
``code/`` on ``sys.path`` before importing the loader) and ``requirements.txt`` pins every package the
loader imports, at the versions installed where the model was logged. So MLflow's default environment
manager (a fresh virtualenv), ``mlflow models serve`` and ``mlflow models build-docker`` load it
without boxsup installed (pydensecrf2 is a source package on PyPI: installing it needs a C++ compiler,
which build-docker's default ``python:<version>-slim`` image lacks). An input example (a small image)
is stored with it and run through the saved model when it is logged, which checks the signature.

Input: RGB images as uint8, shape (N, H, W, 3), one size per call (a single image is N = 1).
Output: label maps, uint8 (N, H, W), pixel value = class id (0 background, then the model's
classes, listed in the model's metadata ``classes``). Params: ``scales`` (test-time scales, default
the run's ``eval.scales``) and ``crf`` (dense CRF, default the run's ``eval.crf``).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import boxsup
from boxsup.evaluation.inference import predict_label_maps
from boxsup.models import on_device
from boxsup.models.checkpoint import load_checkpoint
from boxsup.serving import MODEL_NAME
from boxsup.serving.trained_model import LOADER_MODULE, TrainedModel, mlflow_store, model_from_checkpoint, pick_device
from boxsup.utils.storage import read_file

CHECKPOINT_NAME = "checkpoint.pt"
INPUT_FORMAT = "uint8 RGB images (N, H, W, 3) of one size -> uint8 label maps (N, H, W) of class ids"
# What the loader imports to predict, pinned to this environment's versions. boxsup itself is not on
# PyPI: it travels in the model as code (CODE_PATH). tests/test_mlflow_model.py checks that a fresh
# process loading the model imports nothing outside these and their own dependencies.
_REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pillow", "pydensecrf2", "tqdm")
CODE_PATH = Path(boxsup.__file__).parent  # copied into the model as code/boxsup (MLflow skips __pycache__)
EXAMPLE_SIDE = 32  # the input example: one EXAMPLE_SIDE x EXAMPLE_SIDE image


class BoxSupPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: label maps for image batches, at the run's test-time scales."""

    def __init__(self, model: TrainedModel):
        self.model = model
        self.device = pick_device()
        self.network = on_device(model.network, self.device)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Label maps (N, H, W) uint8 for uint8 RGB images (N, H, W, 3); ``params``: ``scales``, ``crf``."""
        images = np.asarray(model_input)
        if images.ndim == 3:  # one image given without its batch axis
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        params = params or {}
        scales = [float(s) for s in (params.get("scales") or self.model.eval_scales)]
        if not scales or not all(0 < s < float("inf") for s in scales):
            raise ValueError(f"params.scales: every scale must be a finite number > 0, got {scales}")
        crf = bool(params.get("crf", self.model.eval_crf))
        return predict_label_maps(self.network, list(images), scales, crf, self.device, self.model.crf_params)


def _load_pyfunc(data_path: str) -> BoxSupPyfunc:
    """MLflow's entry point: the model from the ``checkpoint.pt`` stored as the model's data."""
    return BoxSupPyfunc(model_from_checkpoint(load_checkpoint(data_path), data_path))


def model_signature(scales: Sequence[float], crf: bool):
    """Input, output and params schema of the pyfunc, with the run's test-time settings as defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
        params=ParamSchema([ParamSpec("scales", "double", [float(s) for s in scales], shape=(-1,)),
                            ParamSpec("crf", "boolean", bool(crf))]),
    )


def input_example() -> np.ndarray:
    """One small uint8 RGB image (1, H, W, 3), a smooth colour ramp: stored with the model as its input
    example (``input_example.json``, ``serving_input_example.json``) and predicted on when it is logged."""
    y, x = np.mgrid[0:EXAMPLE_SIDE, 0:EXAMPLE_SIDE]
    ramp = np.stack([x, y, (x + y) // 2], axis=-1) * (255 // (EXAMPLE_SIDE - 1))
    return ramp.astype(np.uint8)[None]


def log_run_model(tracking_uri: str, run_id: str, checkpoint: str | Path) -> str:
    """Log ``checkpoint`` (the run's ``checkpoint.pt``, a path or URI) as the run's MLflow model; returns its URI."""
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / CHECKPOINT_NAME
        data.write_bytes(read_file(checkpoint))  # read once, from wherever the run directory is
        model = model_from_checkpoint(load_checkpoint(data), str(checkpoint))  # refuse a broken file now
        metadata = {"classes": model.names, "backbone": model.config["model"]["backbone"],
                    "eval_scales": list(model.eval_scales), "eval_crf": model.eval_crf, "input": INPUT_FORMAT,
                    "boxsup_version": boxsup.__version__}
        # Model.log finds the store and the experiment through MLflow's global URI and active run: both are
        # set for this block only (leaving it marks the run FINISHED; the launcher then sets its real status).
        nested = mlflow.active_run() is not None  # called inside a caller's own MLflow run
        with mlflow_store(tracking_uri), mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=False):
            Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id,
                      loader_module=LOADER_MODULE, data_path=str(data), code_paths=[str(CODE_PATH)],
                      signature=model_signature(model.eval_scales, model.eval_crf), input_example=input_example(),
                      metadata=metadata, pip_requirements=pinned_requirements())
    return f"runs:/{run_id}/{MODEL_NAME}"


def pinned_requirements() -> list[str]:
    """``name==version`` of each package the loader needs, as installed here (listed, so MLflow need not infer).

    A local version label is dropped (``torch==2.4.1``, not ``2.4.1+cu121``): PyPI has no such file, and
    ``==2.4.1`` still matches a local build where an index provides one.
    """
    from packaging.version import InvalidVersion, Version

    pinned = []
    for name in _REQUIREMENTS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pinned.append(name)
            continue
        try:
            version = Version(version).public
        except InvalidVersion:
            pass
        pinned.append(f"{name}=={version}")
    return pinned
