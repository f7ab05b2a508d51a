"""Tests for the torchvision backbones: forward shapes, output stride, ImageNet and local weights, config keys."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._api import WeightsEnum

from boxsup.config import CHOICES, load_config
from boxsup.errors import BoxSupError
from boxsup.models import BACKBONES, build_model, model_from_config, on_device, parameter_groups

# Each backbone, the torchvision classification network whose ImageNet weights it starts from, and
# (name in that network, name in ours) of one convolution deep in the backbone.
CASES: dict[str, tuple[Callable[..., nn.Module], str, str]] = {
    "deeplabv3_resnet50": (torchvision.models.resnet50, "layer4.2.conv3.weight", "layer4.2.conv3.weight"),
    "deeplabv3_resnet101": (torchvision.models.resnet101, "layer3.22.conv2.weight", "layer3.22.conv2.weight"),
    "deeplabv3_mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, "features.15.block.0.0.weight",
                                     "15.block.0.0.weight"),
    "lraspp_mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, "features.16.0.weight", "16.0.weight"),
}


def save_classification_weights(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    """An ImageNet classification state dict in torchvision's layout (random values) written to ``path``."""
    torch.manual_seed(1)
    state = CASES[backbone][0](weights=None).state_dict()
    torch.save(state, path)
    return state


def lr_of(model: nn.Module, lr: float) -> dict[int, float]:
    return {id(p): group["lr"] for group in parameter_groups(model, lr) for p in group["params"]}


def test_every_backbone_is_a_config_choice() -> None:
    assert CHOICES["model.backbone"] == BACKBONES
    assert set(CASES) == set(BACKBONES) - {"vgg16_largefov", "small"}


@pytest.mark.parametrize("backbone", list(CASES))
def test_backbone_loads_imagenet_file_and_gives_logits_at_input_size(tmp_path: Path, backbone: str) -> None:
    _, theirs, ours = CASES[backbone]
    path = tmp_path / f"{backbone}-imagenet.pth"
    state = save_classification_weights(path, backbone)
    model = build_model(backbone, num_classes=4, weights=str(path)).eval()
    assert torch.equal(model.backbone.state_dict()[ours], state[theirs])
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 65, 97))
    assert logits.shape == (1, 4, 65, 97) and torch.isfinite(logits).all()
    lrs = lr_of(model, 0.1)  # the new head at 10x, the pretrained backbone at 1x (weights; biases 2x)
    assert lrs[id(model.backbone.state_dict(keep_vars=True)[ours])] == pytest.approx(0.1)
    assert all(lrs[id(p)] in (pytest.approx(1.0), pytest.approx(2.0)) for p in model.classifier.parameters())


def test_output_stride_8_and_16() -> None:
    images = torch.randn(1, 3, 32, 48)
    sizes = {}
    for stride in (8, 16):
        model = build_model("deeplabv3_resnet50", num_classes=2, output_stride=stride).eval()
        with torch.no_grad():
            sizes[stride] = tuple(model.backbone(images)["out"].shape[-2:])
            assert model(images).shape == (1, 2, 32, 48)
        rates = [branch[0].dilation for branch in model.classifier[0].convs[1:4]]
        assert rates == ([(12, 12), (24, 24), (36, 36)] if stride == 8 else [(6, 6), (12, 12), (18, 18)])
    assert sizes == {8: (4, 6), 16: (2, 3)}
    default = build_model("deeplabv3_resnet50", num_classes=2)
    assert default.backbone.layer3[0].conv2.dilation == (1, 1) and default.backbone.layer3[1].conv2.dilation == (2, 2)


@pytest.mark.parametrize("backbone,stride", [("deeplabv3_mobilenet_v3_large", 8), ("vgg16_largefov", 16),
                                             ("small", 8), ("deeplabv3_resnet101", 32)])
def test_output_stride_a_backbone_does_not_run_at(backbone: str, stride: int) -> None:
    with pytest.raises(BoxSupError, match=rf"^model.output_stride: {backbone} runs at output stride .*not {stride}; set"):
        build_model(backbone, num_classes=3, output_stride=stride)


def test_output_stride_config_key(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.root={tmp_path}", "model.backbone=deeplabv3_resnet101", "model.output_stride=16"])
    assert cfg["model"]["output_stride"] == 16
    assert load_config(None, [f"data.root={tmp_path}"])["model"]["output_stride"] is None
    for bad in ("4", "true", "eight"):
        with pytest.raises(BoxSupError, match="model.output_stride"):
            load_config(None, [f"data.root={tmp_path}", f"model.output_stride={bad}"])


def test_model_from_config_keeps_the_stride() -> None:
    model = model_from_config({"backbone": "deeplabv3_resnet50", "weights": "none", "output_stride": 16}, 2)
    assert model.backbone.layer3[0].conv2.stride == (2, 2)
    old_checkpoint = model_from_config({"backbone": "deeplabv3_resnet50", "weights": "imagenet"}, 2, "none")
    assert old_checkpoint.backbone.layer3[0].conv2.stride == (1, 1)


def test_imagenet_weights_through_the_weights_api(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    state = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    asked = []

    def cached(self: WeightsEnum, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        asked.append(self)
        return state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", cached)
    model = build_model("lraspp_mobilenet_v3_large", num_classes=3, weights="imagenet")
    assert asked == [torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1]
    assert torch.equal(model.backbone["4"].block[1][0].weight, state["features.4.block.1.0.weight"])


def test_imagenet_download_failure_names_the_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    hub = torch.hub.get_dir()
    with pytest.raises(BoxSupError) as caught:
        build_model("deeplabv3_mobilenet_v3_large", num_classes=3, weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message and "MobileNetV3-Large weights could not be fetched (<urlopen error no network>)" in message
    assert f"{hub}/checkpoints/mobilenet_v3_large-8738ca79.pth" in message and "none or to a local file" in message


def test_classification_weights_of_another_network_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pth"
    save_classification_weights(path, "deeplabv3_mobilenet_v3_large")
    with pytest.raises(BoxSupError, match=r"^model.weights: .*mobilenet.pth is neither this model's state dict nor an "
                                          r"ImageNet ResNet-50 one: \d+ missing or unexpected keys, e.g. "):
        build_model("deeplabv3_resnet50", num_classes=3, weights=str(path))


def test_own_state_dict_and_another_class_count(tmp_path: Path) -> None:
    source = build_model("lraspp_mobilenet_v3_large", num_classes=5)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 2}, path)
    same = build_model("lraspp_mobilenet_v3_large", num_classes=5, weights=str(path))
    assert torch.equal(same.classifier.high_classifier.weight, source.classifier.high_classifier.weight)
    fewer = build_model("lraspp_mobilenet_v3_large", num_classes=3, weights=str(path))
    assert torch.equal(fewer.backbone["16"][0].weight, source.backbone["16"][0].weight)
    assert fewer.classifier.low_classifier.weight.shape[0] == 3


def test_own_state_dict_with_a_mismatch(tmp_path: Path) -> None:
    state = build_model("deeplabv3_mobilenet_v3_large", num_classes=3).state_dict()
    state["backbone.0.0.weight"] = torch.zeros(2)
    path = tmp_path / "resized.pth"
    torch.save(state, path)
    with pytest.raises(BoxSupError, match=r"^model.weights: .*resized.pth does not fit this model: backbone.0.0.weight "
                                          r"has shape \(2,\)"):
        build_model("deeplabv3_mobilenet_v3_large", num_classes=3, weights=str(path))


def test_trains_on_a_batch_of_one_channels_last() -> None:
    torch.manual_seed(0)
    model = on_device(build_model("deeplabv3_mobilenet_v3_large", num_classes=2), torch.device("cpu"))
    assert model.classifier[4].weight.is_contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups(model, 0.01), momentum=0.9)
    model.train()
    loss = F.cross_entropy(model(torch.randn(1, 3, 33, 41)), torch.randint(0, 2, (1, 33, 41)))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    model.eval()
    images = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        moved = model(images.contiguous(memory_format=torch.channels_last))
        plain = model(images)
    torch.testing.assert_close(moved, plain, atol=1e-4, rtol=1e-4)


def test_a_run_with_a_stride_its_backbone_lacks_stops_before_reading_data(tmp_path: Path) -> None:
    from boxsup.platform.launch import run_boxsup

    cfg = load_config(None, [f"data.root={tmp_path / 'no-such-dataset'}", f"output.dir={tmp_path / 'runs'}",
                             "model.backbone=lraspp_mobilenet_v3_large", "model.output_stride=8"])
    with pytest.raises(BoxSupError, match="^model.output_stride: lraspp_mobilenet_v3_large runs at output stride 16, not 8"):
        run_boxsup(cfg, progress=False)
