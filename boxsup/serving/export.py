"""``boxsup export``: the network as a TorchScript or ONNX file, checked against PyTorch before it is kept.

The exported model takes a normalised float32 image batch (N, 3, H, W) (ImageNet mean/std, as
:func:`boxsup.models.normalize_image` makes) with any N, H and W, and returns logits (N, C, H, W).
It is traced at one size and then run at another batch size and image size; its logits must match
PyTorch's there within :data:`TOLERANCE`, else nothing is written.

Both files say what they expect (:func:`export_metadata`: class names, mean/std, input and output
layout, boxsup version): an ONNX file in its ``metadata_props`` (onnxruntime:
``session.get_modelmeta().custom_metadata_map``), a TorchScript file as the extra file
``boxsup.json`` (``torch.jit.load(path, _extra_files={"boxsup.json": ""})``). The ONNX input and
output name their dynamic axes ``batch``, ``height`` and ``width``.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from boxsup import __version__
from boxsup.errors import BoxSupError
from boxsup.models import IMAGENET_MEAN, IMAGENET_STD
from boxsup.serving.trained_model import TrainedModel
from boxsup.utils.files import atomic_path

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
TRACE_SHAPE = (1, 3, 64, 80)  # the example input the model is traced with
CHECK_SHAPE = (2, 3, 96, 72)  # the check input: another batch size and image size than the trace's
TOLERANCE = 1e-4  # max |exported - PyTorch| over the logits, relative to max(1, max |PyTorch logits|)
AXES = {0: "batch", 2: "height", 3: "width"}  # the dynamic axes of the input and output, as the ONNX file names them
METADATA_FILE = "boxsup.json"  # the TorchScript file's extra file holding export_metadata()


@dataclass
class ExportReport:
    """The written file and how closely it reproduced PyTorch at the check size."""

    path: Path
    format: str
    max_abs_diff: float
    reference_scale: float  # max(1, max |PyTorch logits|): the tolerance is relative to it

    @property
    def allowed(self) -> float:
        return TOLERANCE * self.reference_scale

    def summary(self) -> str:
        n, _, h, w = CHECK_SHAPE
        return (f"wrote {self.path} ({self.format}; input float32 (N, 3, H, W) normalised, output logits (N, C, H, W)); "
                f"checked at batch {n}, {w}x{h} (exported from batch {TRACE_SHAPE[0]}, {TRACE_SHAPE[3]}x{TRACE_SHAPE[2]}): "
                f"max |logit diff| "
                f"vs PyTorch {self.max_abs_diff:.3g} <= {self.allowed:.3g} "
                f"(tolerance {TOLERANCE:g} x max(1, max |logit|) = {TOLERANCE:g} x {self.reference_scale:.3g})")


def export_metadata(model: TrainedModel) -> dict[str, str]:
    """What a consumer of the exported file needs besides the file: string keys and values (ONNX
    ``metadata_props``), lists as JSON. ``classes``: logit channel -> name (0 is background)."""
    return {
        "classes": json.dumps(model.names),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "input": "images: float32 (batch, 3, height, width), RGB, (pixel / 255 - mean) / std",
        "input_layout": "NCHW",
        "output": "logits: float32 (batch, classes, height, width); label map = argmax over classes",
        "backbone": str(model.config.get("model", {}).get("backbone", "")),
        "boxsup_version": __version__,
    }


def export_model(model: TrainedModel, fmt: str, out: str | Path) -> ExportReport:
    """Export ``model``'s network to ``out`` in ``fmt`` (torchscript or onnx), check it, then move it into place."""
    if fmt not in FORMATS:
        raise BoxSupError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    network = model.network.to("cpu").to(memory_format=torch.contiguous_format).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(TRACE_SHAPE, generator=generator)
    check = torch.randn(CHECK_SHAPE, generator=generator)
    with torch.no_grad():
        expected = network(check).numpy()
    target = Path(out)
    with atomic_path(target) as tmp:
        if fmt == "torchscript":
            _save_torchscript(network, example, tmp, export_metadata(model))
            got = _run_torchscript(tmp, check)
        else:
            _save_onnx(network, example, tmp, export_metadata(model))
            got = _run_onnx(tmp, check)
        report = ExportReport(target, fmt, float(np.abs(got - expected).max()), max(1.0, float(np.abs(expected).max())))
        if got.shape != expected.shape or not report.max_abs_diff <= report.allowed:
            raise BoxSupError(f"{target}: the exported {fmt} model does not reproduce PyTorch at {CHECK_SHAPE}: shape "
                              f"{got.shape} vs {expected.shape}, max |logit diff| {report.max_abs_diff:.3g} > "
                              f"{report.allowed:.3g}; nothing written")
    return report


def _save_torchscript(network: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """Scripted when the network allows it (shapes stay symbolic), else traced; the check decides.
    ``metadata`` goes in as the extra file ``boxsup.json``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        try:
            module = torch.jit.script(network)
        except Exception as exc:  # torch raises many types for a construct TorchScript cannot compile
            log.info("torch.jit.script failed (%s); tracing instead", type(exc).__name__)
            with torch.no_grad():
                module = torch.jit.trace(network, example)
        torch.jit.save(module, str(path), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})


def _run_torchscript(path: Path, images: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images).numpy()


def _save_onnx(network: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """The torch.export-based exporter, with the batch, height and width dimensions left dynamic and named
    (``AXES``: a name in ``dynamic_shapes`` is ``Dim.DYNAMIC`` to torch.export, then the ONNX name of
    that axis everywhere in the graph); ``metadata`` as the model's ``metadata_props``."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; a clear line beats its ImportError)
    except ImportError:
        raise BoxSupError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'boxsup[serve]'") from None
    program = torch.onnx.export(network, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({**AXES},), external_data=False, verbose=False)
    assert program is not None  # the dynamo exporter always returns its program
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)  # one file: the weights inside (well under ONNX's 2 GB)


def _run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise BoxSupError("--format onnx needs onnxruntime to check the file: pip install 'boxsup[serve]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images.numpy()})[0]
