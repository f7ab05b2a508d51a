"""Tests for boxsup.models.fcn: shapes, trainability, weight loading and its errors."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models._api import WeightsEnum

from boxsup.errors import BoxSupError
from boxsup.models import IMAGENET_MEAN, IMAGENET_STD, build_model, normalize_image, on_device, parameter_groups


@pytest.fixture(scope="module")
def vgg16_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).state_dict()


@pytest.mark.parametrize("backbone,size", [("small", (65, 97)), ("vgg16_largefov", (64, 64)), ("vgg16_largefov", (41, 57))])
def test_output_matches_input_size(backbone: str, size: tuple[int, int]) -> None:
    model = build_model(backbone, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 3, *size)


def test_small_overfits_a_square() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, size=(64, 64, 3), dtype=np.uint8)
    target = torch.zeros(1, 64, 64, dtype=torch.long)
    image[20:44, 16:40] += 120
    target[0, 20:44, 16:40] = 1
    x = normalize_image(image).unsqueeze(0)
    model = build_model("small", num_classes=2)
    optimizer = torch.optim.SGD(parameter_groups(model, 0.01), momentum=0.9)
    for _ in range(100):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == target).float().mean().item()
    assert accuracy > 0.9


def test_normalize_image() -> None:
    image = np.zeros((5, 7, 3), dtype=np.uint8)
    out = normalize_image(image)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))


def test_parameter_groups_cover_every_parameter_once() -> None:
    model = build_model("small", num_classes=4)
    groups = parameter_groups(model, lr=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.classifier.weight)] == pytest.approx(1.0)
    assert lr_of[id(model.classifier.bias)] == pytest.approx(2.0)
    assert lr_of[id(model.features[0][0].weight)] == pytest.approx(0.1)


def test_unknown_backbone() -> None:
    with pytest.raises(BoxSupError, match="resnet9.*small"):
        build_model("resnet9", num_classes=3)


def test_imagenet_for_small_is_an_error() -> None:
    with pytest.raises(BoxSupError, match="no ImageNet weights"):
        build_model("small", num_classes=3, weights="imagenet")


def test_imagenet_download_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(BoxSupError, match="could not be fetched.*none or to a local file"):
        build_model("vgg16_largefov", num_classes=3, weights="imagenet")


def test_imagenet_weights_are_copied(monkeypatch: pytest.MonkeyPatch, vgg16_state: dict[str, torch.Tensor]) -> None:
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: vgg16_state)
    model = build_model("vgg16_largefov", num_classes=3, weights="imagenet")
    assert torch.equal(model.features[28].weight, vgg16_state["features.28.weight"])
    fc6 = vgg16_state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(model.fc6.weight[1, :, 2, 1], fc6[4, :, 6, 3])
    assert torch.equal(model.fc7.bias, vgg16_state["classifier.3.bias"][::4])


def test_local_vgg16_state_dict(tmp_path, vgg16_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save({k: v for k, v in vgg16_state.items() if k.startswith("features.")}, path)
    model = build_model("vgg16_largefov", num_classes=3, weights=str(path))
    assert torch.equal(model.features[0].weight, vgg16_state["features.0.weight"])


def test_local_model_state_dict_and_checkpoint(tmp_path) -> None:
    source = build_model("small", num_classes=3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    model = build_model("small", num_classes=3, weights=str(path))
    assert torch.equal(model.classifier.weight, source.classifier.weight)
    assert torch.equal(model.features[5][1].running_var, source.features[5][1].running_var)


def test_other_class_count_keeps_backbone_only(tmp_path) -> None:
    source = build_model("small", num_classes=5)
    path = tmp_path / "coco.pt"
    torch.save(source.state_dict(), path)
    model = build_model("small", num_classes=3, weights=str(path))
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert model.classifier.weight.shape[0] == 3


def test_missing_weights_file(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(BoxSupError, match="nope.pth"):
        build_model("small", num_classes=3, weights=str(missing))


def test_corrupt_weights_file(tmp_path) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BoxSupError, match="bad.pth"):
        build_model("small", num_classes=3, weights=str(path))


def test_weights_of_another_model(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(BoxSupError, match="other.pth.*does not fit"):
        build_model("small", num_classes=3, weights=str(path))


def test_backbone_shape_mismatch(tmp_path) -> None:
    state = build_model("small", num_classes=3).state_dict()
    state["features.0.0.weight"] = torch.zeros(1)
    path = tmp_path / "resized.pth"
    torch.save(state, path)
    with pytest.raises(BoxSupError, match="resized.pth.*features.0.0.weight has shape"):
        build_model("small", num_classes=3, weights=str(path))


def test_on_a_cpu_the_weights_are_channels_last_and_the_outputs_unchanged() -> None:
    torch.manual_seed(0)
    model = build_model("small", 3).eval()
    images = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        before = model(images)
        moved = on_device(model, torch.device("cpu"))
        after = moved(images)
    assert moved.classifier.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
