"""Fully connected CRF post-processing (Krähenbühl & Koltun) as used by DeepLab and BoxSup at test time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf

from boxsup.errors import BoxSupError
from boxsup.utils.numbers import POSITIVE, Range, checked_number

CONFIG_KEY = "eval.crf_params"  # where a run config keeps these settings

# DeepLab-LargeFOV cross-validated its bilateral spatial std on PASCAL VOC images (~500 px long side).
REFERENCE_SIZE = 500.0
_MIN_PROB = 1e-8


@dataclass(frozen=True)
class CRFParams:
    """The dense CRF's kernels, named as in DeepLab's prototxt (the paper's symbols in brackets).

    The defaults (which the run config's ``eval.crf_params`` takes from here, with ``RANGES``) are
    DeepLab-LargeFOV's published PASCAL VOC values (Chen et al., ICLR 2015): bilateral kernel weight 4
    (w1), spatial std 121 px (theta_alpha), colour std 5 (theta_beta); Gaussian kernel weight 3 (w2),
    std 3 px (theta_gamma). ``bi_xy_std`` is given at VOC scale and scaled to each image's longer side
    (``bi_xy_std * max(H, W) / 500``), so it means the same on small images. DeepLab ran 10 mean-field
    iterations; 5 are nearly converged and twice as fast.
    """

    bi_w: float = 4.0  # bilateral kernel weight (w1)
    bi_xy_std: float = 121.0  # its spatial std (theta_alpha), px at a 500 px long side: scaled to each image
    bi_rgb_std: float = 5.0  # its colour std (theta_beta)
    pos_w: float = 3.0  # Gaussian (smoothness) kernel weight (w2)
    pos_xy_std: float = 3.0  # its spatial std in px (theta_gamma)
    iterations: int = 5  # mean-field iterations (DeepLab: 10; 5 are nearly converged)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CRFParams:
        """From a config's (already validated) ``eval.crf_params`` mapping; missing keys keep their default."""
        return cls(**{key: value for key, value in settings.items() if key in cls.__dataclass_fields__})

    @classmethod
    def checked(cls, name: str, value: Any, source: str) -> float | int:
        """``value`` for the parameter ``name`` as the run config's ``eval.crf_params.<name>`` takes it (a float
        parameter any finite number, ``iterations`` a whole one) within ``RANGES``; else one line naming
        ``source`` and the key."""
        key = f"{CONFIG_KEY}.{name}"
        if name not in RANGES:
            raise BoxSupError(f"{source}: unknown config key {key!r}")
        try:
            number = checked_number(key, value, getattr(cls(), name))  # the default's type is the setting's
        except BoxSupError as exc:
            raise BoxSupError(f"{source}: {exc}") from None
        if number not in RANGES[name]:
            raise BoxSupError(f"{source}: config key {key}: {RANGES[name].describe()}, got {number!r}")
        return number

    @classmethod
    def of_config(cls, config: dict[str, Any] | None, source: str = "config") -> CRFParams:
        """A run config's ``eval.crf_params`` (DeepLab's where it has none, as in runs from before the keys
        existed), every value checked (:meth:`checked`); ``source`` names the config in an error."""
        section = config.get("eval") if isinstance(config, dict) else None
        params = section.get("crf_params") if isinstance(section, dict) else None
        if params is not None and not isinstance(params, dict):
            raise BoxSupError(f"{source}: config key {CONFIG_KEY}: expected a mapping, got {params!r}")
        checked: dict[str, Any] = {name: cls.checked(name, value, source) for name, value in (params or {}).items()}
        return cls(**checked)

    def settings(self) -> dict[str, Any]:
        """As the ``eval.crf_params`` mapping of a config."""
        return asdict(self)

    def describe(self) -> str:
        """One line: ``bi_w=4 bi_xy_std=121 ...``."""
        return " ".join(f"{key}={value:g}" for key, value in self.settings().items())


# The values each parameter accepts: every kernel weight, std and the iteration count is > 0.
RANGES: dict[str, Range] = {f.name: POSITIVE for f in fields(CRFParams)}


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine class probabilities (C, H, W) of an RGB uint8 image (H, W, 3) with mean-field inference.

    ``params`` defaults to :class:`CRFParams` (DeepLab-LargeFOV's values, 5 iterations).
    Returns refined probabilities (C, H, W), float32, summing to 1 per pixel.
    """
    params = params or CRFParams()
    num_classes, height, width = probs.shape
    if image.shape != (height, width, 3):
        raise ValueError(f"image shape {image.shape} does not match probabilities {probs.shape}")
    bi_sxy = params.bi_xy_std * max(height, width) / REFERENCE_SIZE
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(_unary(probs))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    rgb = np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # decoded images may be read-only views
    crf.addPairwiseBilateral(sxy=bi_sxy, srgb=params.bi_rgb_std, rgbim=rgb, compat=params.bi_w)
    refined = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return refined.reshape(num_classes, height, width)


def _unary(probs: np.ndarray) -> np.ndarray:
    """Negative log-probabilities, (C, H*W) float32 C-contiguous, as DenseCRF expects."""
    clipped = np.clip(probs.reshape(probs.shape[0], -1), _MIN_PROB, 1.0)
    return np.ascontiguousarray(-np.log(clipped), dtype=np.float32)
