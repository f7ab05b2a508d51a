"""Which CUDA kernels run: tuned ones for the fixed-size training crops, deterministic ones for
bitwise-repeatable runs (``train.deterministic``), cuDNN's heuristics for inputs of many sizes.

On a CPU every operation the networks use is already deterministic. On CUDA three are not: cuDNN
picks its convolution algorithms per process (some accumulate with atomics), bilinear upsampling's
backward pass and the 2-D NLL loss accumulate with atomics. :func:`use_deterministic_algorithms`
switches torch and cuDNN to their deterministic kernels; the upsampling and the loss then take the
forms here, whose backward passes are matrix products and gathers (deterministic with cuBLAS's fixed
workspace). They give the same values as ``F.interpolate`` and ``F.cross_entropy`` up to float
rounding, so a deterministic run differs in its last bits from a run without the setting, and two
deterministic runs (or a run and its recovery from a checkpoint) are bitwise equal.

torchvision's DeepLab heads pool with ``AdaptiveAvgPool2d`` and upsample inside torchvision, neither
of which has a deterministic CUDA backward: :data:`DETERMINISTIC_BACKBONES` are the networks
this covers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from boxsup.errors import BoxSupError

DETERMINISTIC_BACKBONES = ("vgg16_largefov", "small")
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's documented setting for reproducible results


def check_deterministic_backbone(backbone: str) -> None:
    """A one-line error where ``train.deterministic`` cannot hold for ``backbone`` on a GPU."""
    if backbone not in DETERMINISTIC_BACKBONES:
        raise BoxSupError(f"train.deterministic: not available for model.backbone {backbone} (torchvision's heads pool "
                          f"and upsample without a deterministic CUDA backward); use {' or '.join(DETERMINISTIC_BACKBONES)}, "
                          "or train.deterministic=false")


def configure_kernels(device: torch.device, deterministic: bool) -> None:
    """For a training process on ``device``, before its first CUDA matrix product: deterministic kernels,
    or cuDNN's benchmark mode (it times the candidate algorithms once per input shape, which pays for
    the fixed-size training crops). Nothing changes on a CPU, whose kernels are deterministic already."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = not deterministic


@contextmanager
def untuned_cudnn() -> Iterator[None]:
    """cuDNN's heuristics instead of its benchmark mode, for inputs of many sizes (whole images in the
    label round and in evaluation), where timing every algorithm for every new size costs more than
    it saves."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def needs_deterministic_form(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s operations must avoid CUDA's atomic accumulations."""
    return tensor.is_cuda and torch.are_deterministic_algorithms_enabled()


@functools.lru_cache(maxsize=64)
def interpolation_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out_size, in_size) float32 weights of 1-D linear interpolation, ``align_corners=False`` (half-pixel
    centres, sources clamped at the first pixel), as ``F.interpolate`` computes them; made on the CPU."""
    scale = in_size / out_size
    source = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = source - low.float()
    matrix = torch.zeros(out_size, in_size)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, low), 1.0 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix


@functools.lru_cache(maxsize=64)
def _matrix_on(out_size: int, in_size: int, device: torch.device) -> torch.Tensor:
    """``interpolation_matrix`` on ``device``, copied there once (a copy the host would wait for each step)."""
    return interpolation_matrix(out_size, in_size).to(device)


def bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two float32 matrix products
    (N, C, h, w) -> (N, C, H, W), whose backward pass is deterministic."""
    height = _matrix_on(size[0], x.shape[-2], x.device)
    width = _matrix_on(size[1], x.shape[-1], x.device)
    with torch.autocast(x.device.type, enabled=False):
        return height @ x.float() @ width.T


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits bilinearly upsampled to ``size``: by matrix products where determinism is asked of CUDA."""
    if needs_deterministic_form(logits):
        return bilinear_resize(logits, size)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def pixel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the pixels whose target is not ``ignore_index``, in float32: ``F.cross_entropy``,
    or where determinism is asked of CUDA, a log-softmax, a gather and sums."""
    logits = logits.float()
    if needs_deterministic_form(logits):
        return gathered_cross_entropy(logits, targets, ignore_index)
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def gathered_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``F.cross_entropy(logits, targets, ignore_index=ignore_index)`` from a log-softmax, a gather and sums,
    whose backward passes are deterministic on CUDA (NaN where every pixel is ignored, as there)."""
    valid = targets != ignore_index
    picked = F.log_softmax(logits, dim=1).gather(1, torch.where(valid, targets, 0).unsqueeze(1)).squeeze(1)
    return -(picked * valid).sum() / valid.sum()
