"""``boxsup export``: TorchScript and ONNX files that match PyTorch at image sizes they were not exported at."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boxsup.cli import main
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
