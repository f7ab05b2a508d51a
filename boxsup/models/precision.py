"""The arithmetic a network runs in: ``train.precision`` (auto | bf16 | fp16 | fp32).

auto is bf16 on a GPU that has it (Ampere and later), fp16 with a gradient scaler on an older GPU,
and fp32 on a CPU. Only the network runs in the lower precision (autocast); losses, costs and
reductions are computed in float32 from its float32-cast output.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from boxsup.errors import BoxSupError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is bf16, fp16 or fp32; ``dtype`` the autocast dtype (None: fp32)."""

    name: str

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """The context the network's forward pass runs in on ``device``."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """fp16 needs its loss scaled (its exponent range is narrow); bf16 and fp32 do not."""
        return torch.amp.GradScaler(device.type) if self.name == "fp16" else None


FP32 = Precision("fp32")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``train.precision`` on ``device``: auto picks bf16 / fp16 on a GPU (by what it supports), fp32 on a CPU."""
    if name not in PRECISIONS:
        raise BoxSupError(f"config key train.precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return FP32
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BoxSupError(f"config key train.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                          "use fp16 or auto")
    return Precision(name)
