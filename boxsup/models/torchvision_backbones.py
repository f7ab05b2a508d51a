"""Current segmentation networks from torchvision: DeepLabV3 on ResNet-50/101 or MobileNetV3-Large, LR-ASPP.

They keep the contract of :mod:`boxsup.models.fcn`: normalised images (N, 3, H, W) in, logits
(N, num_classes, H, W) out (torchvision's ``{"out": ...}`` unwrapped, no auxiliary head). The
ImageNet-pretrained part is ``backbone``; every layer on top of it is new and lives under
``classifier`` (torchvision's own naming), so :func:`boxsup.models.fcn.parameter_groups` gives the
whole head the new-layer learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    mobilenet_v3_large,
    resnet50,
    resnet101,
)
from torchvision.models._api import WeightsEnum
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.lraspp import LRASPP


class DeepLabV3Logits(DeepLabV3):
    """torchvision's DeepLabV3 returning the logits tensor instead of ``{"out": logits}``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(images)["out"]


class LRASPPLogits(LRASPP):
    """torchvision's LR-ASPP returning the logits tensor instead of ``{"out": logits}``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(images)["out"]


class PooledBatchNorm(nn.BatchNorm2d):
    """BatchNorm of ASPP's image-pooling branch that trains on a batch of one image.

    That branch has one value per channel and image, which plain BatchNorm refuses in training; a
    batch of one (``train.batch_size`` 1 per worker, or an epoch's last batch) uses the running statistics.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _deeplab_head(in_channels: int, num_classes: int, rates: tuple[int, ...]) -> DeepLabHead:
    """torchvision's DeepLabV3 head (ASPP, 3x3 conv, per-class 1x1 conv); its pooling branch takes a batch of one."""
    head = DeepLabHead(in_channels, num_classes, atrous_rates=rates)
    pooling = head[0].convs[-1]  # ASPPPooling: average pool, 1x1 conv, BatchNorm, ReLU
    pooling[2] = PooledBatchNorm(pooling[2].num_features)
    return head


@dataclass(frozen=True)
class TorchvisionBackbone:
    """One torchvision network: how to build it and where its ImageNet backbone weights come from.

    ``build(num_classes, output_stride)`` makes the untrained network; ``imagenet`` are the
    ImageNet classification weights its ``backbone`` starts from; ``imagenet_prefix`` is the key
    prefix of the backbone's layers in such a classification state dict; ``output_strides`` are the
    strides it can run at, the first its default.
    """

    arch: str
    build: Callable[[int, int], nn.Module]
    imagenet: WeightsEnum
    imagenet_prefix: str
    output_strides: tuple[int, ...]


def _deeplabv3_resnet(make_resnet: Callable[..., nn.Module]) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, output_stride: int) -> nn.Module:
        # Stride 16 dilates layer4 only; stride 8 layer3 too. ASPP rates halve at stride 16 (DeepLabV3, Sec. 3.3).
        resnet = make_resnet(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
        body = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        return DeepLabV3Logits(body, _deeplab_head(2048, num_classes, rates), aux_classifier=None)

    return build


def _mobilenet_features() -> tuple[nn.Sequential, list[int]]:
    """MobileNetV3-Large's features with a dilated last stage (stride 16), and the indices of its stage ends."""
    features = mobilenet_v3_large(weights=None, dilated=True).features
    # Blocks that start a new stage carry _is_cn; the first and last layers close the list (as torchvision does).
    stages = [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]
    return features, stages


def _deeplabv3_mobilenet(num_classes: int, output_stride: int) -> nn.Module:
    """torchvision's DeepLabV3-MobileNetV3 (ASPP rates 12, 24, 36); ``output_stride`` is always 16 here."""
    features, stages = _mobilenet_features()
    body = IntermediateLayerGetter(features, return_layers={str(stages[-1]): "out"})
    channels = cast(int, features[stages[-1]].out_channels)
    return DeepLabV3Logits(body, _deeplab_head(channels, num_classes, (12, 24, 36)),
                           aux_classifier=None)


def _lraspp_mobilenet(num_classes: int, output_stride: int) -> nn.Module:
    """torchvision's LR-ASPP on MobileNetV3-Large; ``output_stride`` is always 16 here (16, plus 8 for detail)."""
    features, stages = _mobilenet_features()
    low, high = stages[-4], stages[-1]  # stride 8 and stride 16 features
    body = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "high"})
    return LRASPPLogits(body, features[low].out_channels, features[high].out_channels, num_classes)


TORCHVISION_BACKBONES: dict[str, TorchvisionBackbone] = {
    "deeplabv3_resnet50": TorchvisionBackbone(
        "ResNet-50", _deeplabv3_resnet(resnet50), ResNet50_Weights.IMAGENET1K_V1, "", (8, 16)),
    "deeplabv3_resnet101": TorchvisionBackbone(
        "ResNet-101", _deeplabv3_resnet(resnet101), ResNet101_Weights.IMAGENET1K_V1, "", (8, 16)),
    "deeplabv3_mobilenet_v3_large": TorchvisionBackbone(
        "MobileNetV3-Large", _deeplabv3_mobilenet, MobileNet_V3_Large_Weights.IMAGENET1K_V1, "features.", (16,)),
    "lraspp_mobilenet_v3_large": TorchvisionBackbone(
        "MobileNetV3-Large", _lraspp_mobilenet, MobileNet_V3_Large_Weights.IMAGENET1K_V1, "features.", (16,)),
}  # fmt: skip


def is_classification_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` looks like an ImageNet classification state dict rather than one of these networks."""
    return not any(key.startswith("backbone.") for key in state)


def backbone_state(model: nn.Module, classification: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of an ImageNet ``classification`` state dict that ``model.backbone`` holds, under its own keys.

    Its final classifier (``fc``, ``classifier``) is left out. BatchNorm step counters a file lacks
    (older torchvision files do) are taken from the model: they play no part in inference or training.
    """
    picked = {}
    for key, value in model.get_submodule("backbone").state_dict().items():
        if prefix + key in classification:
            picked[key] = classification[prefix + key]
        elif key.endswith("num_batches_tracked"):
            picked[key] = value
    return picked
