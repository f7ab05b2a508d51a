"""Fully convolutional segmentation networks: DeepLab-LargeFOV on VGG-16 (the paper's), a small CPU one,
and torchvision's current ones (:mod:`boxsup.models.torchvision_backbones`); building and weight loading.

Every model takes images normalised with ImageNet mean/std, shape (N, 3, H, W), and returns
logits (N, num_classes, H, W): the coarse score map is bilinearly upsampled to the input size.
Each model keeps its new layers (those not pretrained on ImageNet, ending in the per-class 1x1
layer) under ``classifier``; :func:`parameter_groups` relies on it.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights
from torchvision.models._api import WeightsEnum

from boxsup.errors import BoxSupError
from boxsup.models.kernels import upsample_logits
from boxsup.models.torchvision_backbones import (
    TORCHVISION_BACKBONES,
    TorchvisionBackbone,
    backbone_state,
    is_classification_state,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Every backbone and the output strides it runs at (the first is its default): the one registry.
OUTPUT_STRIDES: dict[str, tuple[int, ...]] = {
    "vgg16_largefov": (8,),
    "small": (4,),
    **{name: spec.output_strides for name, spec in TORCHVISION_BACKBONES.items()},
}
BACKBONES = tuple(OUTPUT_STRIDES)

# VGG-16 "D" convolutions per block; pooling layers sit between blocks exactly as in
# torchvision's ``vgg16().features``, so the layer indices (and state-dict keys) match.
_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def normalize_image(image_uint8_hwc: np.ndarray) -> torch.Tensor:
    """Turn an RGB uint8 image (H, W, 3) into a float tensor (3, H, W) normalised with ImageNet mean/std."""
    if image_uint8_hwc.dtype != np.uint8 or image_uint8_hwc.ndim != 3 or image_uint8_hwc.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image_uint8_hwc.dtype} {image_uint8_hwc.shape}")
    # A copy: decoded images are often read-only views, which torch.from_numpy warns about.
    return normalize_batch(torch.from_numpy(np.array(image_uint8_hwc, order="C")).permute(2, 0, 1)[None])[0]


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) as float32, normalised with ImageNet mean/std, on their own device
    (a training batch travels to the GPU as uint8, a quarter of the bytes, and is normalised there)."""
    mean, std = _imagenet_stats(images.device)
    return (images.float().div_(255.0) - mean) / std


@functools.lru_cache(maxsize=8)
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std (1, 3, 1, 1) on ``device``, made once: a tensor made from Python numbers on a GPU
    is a copy the host waits for, which would stall every training step."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV: VGG-16 with pool4/pool5 at stride 1, conv5 dilation 2, fc6 3x3 dilation 12; stride 8."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = _vgg16_largefov_features()
        self.fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Conv2d(1024, num_classes, kernel_size=1)
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)
        x = self.dropout(F.relu(self.fc6(x), inplace=True))
        x = self.dropout(F.relu(self.fc7(x), inplace=True))
        return _upsample_to(self.classifier(x), images)


class SmallFCN(nn.Module):
    """A small conv-BN-ReLU FCN for CPU demos: output stride 4, dilations 2/4/8, receptive field 123 px."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 32, stride=2),
            _conv_bn_relu(32, 48),
            _conv_bn_relu(48, 64, stride=2),
            _conv_bn_relu(64, 96),
            _conv_bn_relu(96, 128, dilation=2),
            _conv_bn_relu(128, 128, dilation=4),
            _conv_bn_relu(128, 128, dilation=8),
        )
        self.classifier = nn.Conv2d(128, num_classes, kernel_size=1)
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _upsample_to(self.classifier(self.features(images)), images)


def build_model(backbone: str, num_classes: int, weights: str = "none", output_stride: int | None = None) -> nn.Module:
    """Build a segmentation FCN.

    ``backbone``: one of :data:`BACKBONES`. ``weights``: "none" (random init), "imagenet" (the
    backbone's ImageNet classification weights through torchvision's weights API, fetched into
    torch's hub cache; the layers on top start fresh; not for "small"), or a path to a local state
    dict: an ImageNet classification one of the backbone (torchvision's layout) or one of this very
    model (a checkpoint dict with a "model" or "state_dict" entry is accepted too).
    ``output_stride``: None (the backbone's default) or one the backbone runs at (:data:`OUTPUT_STRIDES`).
    """
    output_stride = check_model_settings(backbone, weights, output_stride)
    if num_classes < 1:
        raise BoxSupError(f"model.num_classes: must be at least 1, got {num_classes}")
    spec = TORCHVISION_BACKBONES.get(backbone)
    if spec is not None:
        model = spec.build(num_classes, output_stride)
    else:
        model = LargeFOV(num_classes) if backbone == "vgg16_largefov" else SmallFCN(num_classes)
    if weights == "imagenet":
        if spec is not None:
            _copy_imagenet_backbone(model, _fetch_imagenet(spec.imagenet, spec.arch), spec, "torchvision IMAGENET1K_V1")
        else:
            assert isinstance(model, LargeFOV)  # check_model_settings refuses imagenet for small
            _copy_vgg16(model, _fetch_imagenet(VGG16_Weights.IMAGENET1K_V1, "VGG-16"), source="torchvision IMAGENET1K_V1")
    elif weights != "none":
        _load_local(model, Path(weights), spec)
    return model


def model_from_config(model_cfg: dict[str, Any], num_classes: int, weights: str | None = None) -> nn.Module:
    """The network a config's ``model`` section (or a checkpoint's) describes; ``weights`` overrides its weights.

    Checkpoints written before ``model.output_stride`` existed have the backbone's default stride.
    """
    return build_model(model_cfg["backbone"], num_classes, model_cfg["weights"] if weights is None else weights,
                       model_cfg.get("output_stride"))


def check_model_settings(backbone: str, weights: str, output_stride: int | None) -> int:
    """The output stride the model will run at; a one-line error for a combination that cannot be built."""
    if backbone not in BACKBONES:
        raise BoxSupError(f"model.backbone: unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if weights == "imagenet" and backbone == "small":
        raise BoxSupError(f"model.weights: no ImageNet weights exist for backbone {backbone!r}; use none or a local file")
    strides = OUTPUT_STRIDES[backbone]
    if output_stride is None:
        return strides[0]
    if output_stride not in strides:
        choices = " or ".join(map(str, strides))
        raise BoxSupError(f"model.output_stride: {backbone} runs at output stride {choices}, not {output_stride}; "
                          f"set {choices} or null")
    return output_stride


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``, its weights in channels-last layout (feed it channels-last batches).

    oneDNN's CPU convolutions and cuDNN's run faster channels-last than in the default layout, in
    training and inference (docs/benchmarks.md). Outputs follow the weights' layout.
    """
    return model.to(device).to(memory_format=torch.channels_last)


def parameter_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """SGD parameter groups with DeepLab's learning-rate multipliers.

    The new layers under ``classifier`` (the per-class layer; for torchvision's networks their whole
    head) learn at 10x ``lr``, the backbone at 1x; biases (and other 1-D parameters such as
    BatchNorm's) at twice their layer's rate. Empty groups are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.startswith("classifier."), param.ndim == 1)
            groups.setdefault(key, []).append(param)
    return [
        {"params": params, "lr": lr * (10.0 if is_head else 1.0) * (2.0 if is_bias else 1.0)}
        for (is_head, is_bias), params in sorted(groups.items())
    ]


def _vgg16_largefov_features() -> nn.Sequential:
    """VGG-16 convolutions with DeepLab's 3x3 pooling: stride 2 after blocks 1-3, stride 1 after 4-5."""
    layers: list[nn.Module] = []
    in_channels = 3
    for block, widths in enumerate(_VGG16_BLOCKS):
        dilation = 2 if block == 4 else 1
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            in_channels = width
        layers.append(nn.MaxPool2d(3, stride=2 if block < 3 else 1, padding=1))
    return nn.Sequential(*layers)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _upsample_to(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    return upsample_logits(logits, (height, width))


def _init_weights(model: LargeFOV | SmallFCN) -> None:
    """Kaiming-normal convolutions with zero biases; the classifier gets N(0, 0.01) as in DeepLab."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.normal_(model.classifier.weight, std=0.01)  # its bias was zeroed with the other convolutions'


def _fetch_imagenet(weights: WeightsEnum, arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's weights API (torch's hub cache, else a download)."""
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad download raises RuntimeError
        cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        raise BoxSupError(
            f"model.weights: the ImageNet {arch} weights could not be fetched ({_first_line(exc)}); "
            f"put {weights.url} at {cached}, or set model.weights to none or to a local file"
        ) from exc


# What torch's weights-only unpickler says of a file that needs code beyond tensors and plain types.
_BEYOND_TENSORS = re.compile(r"GLOBAL|Can only|unrecognized function|allowlisted")


def load_tensor_file(source: str | Path | io.BytesIO, name: str, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``: nothing in the file can run code.

    A file that needs more than tensors and plain types, or that is damaged, is one line naming
    ``name`` (the file) and ``what`` it should have been.
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _BEYOND_TENSORS.search(str(exc)):
            raise BoxSupError(f"{name}: holds objects beyond tensors and plain types; refused "
                              f"(a {what} written by boxsup holds only those)") from None
        raise BoxSupError(f"{name}: cannot read {what} (UnpicklingError: damaged, truncated or not a torch file)") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise BoxSupError(f"{name}: cannot read {what} ({type(exc).__name__}: damaged, truncated or not a torch file)") from None


def _load_local(model: nn.Module, path: Path, spec: TorchvisionBackbone | None) -> None:
    """An ImageNet classification state dict of the backbone, or one of this model (``spec``: a torchvision one's)."""
    if not path.is_file():
        raise BoxSupError(f"model.weights: weights file {path} does not exist")
    state = load_tensor_file(path, f"model.weights: {path}", "state dict")
    state = _unwrap_checkpoint(state, path)
    if spec is not None and is_classification_state(state):
        _copy_imagenet_backbone(model, state, spec, str(path))
    elif isinstance(model, LargeFOV) and "features.0.weight" in state and "fc6.weight" not in state:
        _copy_vgg16(model, state, source=str(path))
    else:
        _load_own(model, state, path)


def _copy_imagenet_backbone(model: nn.Module, state: dict[str, torch.Tensor], spec: TorchvisionBackbone, source: str) -> None:
    """Copy an ImageNet classification state dict into ``model.backbone``; its head keeps its fresh weights."""
    picked = backbone_state(model, state, spec.imagenet_prefix)
    backbone = model.get_submodule("backbone")
    problem = fit_problem(backbone, picked)
    if problem is not None:
        raise BoxSupError(f"model.weights: {source} is neither this model's state dict nor an ImageNet "
                          f"{spec.arch} one: {problem}")
    backbone.load_state_dict(picked)


def _unwrap_checkpoint(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BoxSupError(f"model.weights: {path} does not hold a state dict")
    return state


def fit_problem(model: nn.Module, state: dict[str, torch.Tensor], any_classifier: bool = False) -> str | None:
    """Why ``state`` cannot be loaded into ``model`` (keys, then shapes), or None when it fits.

    ``any_classifier``: a ``classifier`` of another shape (another class count) is no problem.
    """
    own = model.state_dict()
    odd_keys = sorted(set(own) ^ set(state))
    if odd_keys:
        return f"{len(odd_keys)} missing or unexpected keys, e.g. {odd_keys[0]}"
    for key in own:
        if state[key].shape != own[key].shape and not (any_classifier and key.startswith("classifier.")):
            return f"{key} has shape {tuple(state[key].shape)}, expected {tuple(own[key].shape)}"
    return None


def _load_own(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict of this very model; a classifier for another class count stays re-initialised."""
    problem = fit_problem(model, state, any_classifier=True)
    if problem is not None:
        raise BoxSupError(f"model.weights: {path} does not fit this model: {problem}")
    own = model.state_dict()
    resized = [k for k in own if state[k].shape != own[k].shape]
    if resized:
        log.warning("%s: the classifier is for another number of classes; it stays randomly initialised", path)
    model.load_state_dict({k: v for k, v in state.items() if k not in resized}, strict=not resized)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _copy_vgg16(model: LargeFOV, vgg: dict[str, torch.Tensor], source: str) -> None:
    """Copy VGG-16 convolutions into the backbone; fc6/fc7 are decimated from fc layers as in DeepLab."""
    convs = {k: v for k, v in vgg.items() if k.startswith("features.")}
    try:
        model.features.load_state_dict({k.removeprefix("features."): v for k, v in convs.items()})
    except RuntimeError as exc:
        raise BoxSupError(f"model.weights: {source} is not a VGG-16 state dict") from exc
    fc_shapes = [tuple(vgg[k].shape) if k in vgg else None for k in ("classifier.0.weight", "classifier.3.weight")]
    if fc_shapes == [(4096, 512 * 7 * 7), (4096, 4096)]:
        with torch.no_grad():
            fc6 = vgg["classifier.0.weight"].view(4096, 512, 7, 7)[::4, :, ::3, ::3]
            assert model.fc6.bias is not None and model.fc7.bias is not None  # Conv2d's default bias=True
            model.fc6.weight.copy_(fc6)
            model.fc6.bias.copy_(vgg["classifier.0.bias"][::4])
            model.fc7.weight.copy_(vgg["classifier.3.weight"][::4, ::4].reshape(1024, 1024, 1, 1))
            model.fc7.bias.copy_(vgg["classifier.3.bias"][::4])
