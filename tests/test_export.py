"""``boxsup export``: TorchScript and ONNX files that match PyTorch at image sizes they were not exported at."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import boxsup
from boxsup.cli import main
from boxsup.models import IMAGENET_MEAN, IMAGENET_STD
from boxsup.serving import export
from boxsup.serving.trained_model import load_trained_model
from tiny_checkpoints import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")


def run_exported(fmt: str, path, images: torch.Tensor) -> np.ndarray:
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path)).eval()(images).numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_matches_pytorch_at_new_sizes(checkpoint, tmp_path, capsys, fmt):
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "max |logit diff| vs PyTorch" in line and f"tolerance {export.TOLERANCE:g}" in line
    # a batch size and image size neither the export nor its own check used, odd sides included
    images = torch.randn(3, 3, 57, 91, generator=torch.Generator().manual_seed(1))
    network = load_trained_model(checkpoint).network
    with torch.no_grad():
        reference = network(images).numpy()
    got = run_exported(fmt, out, images)
    assert got.shape == reference.shape == (3, 3, 57, 91)
    assert np.abs(got - reference).max() <= export.TOLERANCE * max(1.0, np.abs(reference).max())
    assert (got.argmax(1) == reference.argmax(1)).mean() > 0.999


def test_an_export_that_does_not_reproduce_pytorch_is_not_kept(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no file can pass: the check must refuse it
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boxsup: error:") and "does not reproduce PyTorch" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated")
def test_exported_files_say_what_they_expect(checkpoint, tmp_path):
    """Class names, mean/std, layout and boxsup version travel in the file; the ONNX axes have names."""
    import onnxruntime

    model = load_trained_model(checkpoint)
    export.export_model(model, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["classes"]) == ["background", "cat", "dog"] == model.names
    assert json.loads(props["mean"]) == list(IMAGENET_MEAN) and json.loads(props["std"]) == list(IMAGENET_STD)
    assert props["input_layout"] == "NCHW" and props["boxsup_version"] == boxsup.__version__
    assert props["backbone"] == "small"
    (images,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (images.name, images.shape) == ("images", ["batch", 3, "height", "width"])
    assert (logits.name, logits.shape) == ("logits", ["batch", 3, "height", "width"])

    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    names = {d.dim_param for v in [*graph.input, *graph.output] for d in v.type.tensor_type.shape.dim if d.dim_param}
    assert names == {"batch", "height", "width"}

    export.export_model(model, "torchscript", tmp_path / "model.pt")
    extra = {export.METADATA_FILE: ""}
    torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert json.loads(extra[export.METADATA_FILE]) == props
