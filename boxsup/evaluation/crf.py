"""Fully connected CRF post-processing (Krähenbühl & Koltun) as used by DeepLab and BoxSup at test time."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pydensecrf.densecrf as dcrf

from boxsup.config import DEFAULTS, crf_settings

# DeepLab-LargeFOV cross-validated its bilateral spatial std on PASCAL VOC images (~500 px long side).
REFERENCE_SIZE = 500.0
_MIN_PROB = 1e-8


@dataclass(frozen=True)
class CRFParams:
    """The dense CRF's kernels, named as in DeepLab's prototxt (the paper's symbols in brackets).

    Defaults (``eval.crf_params`` in config.DEFAULTS) are DeepLab-LargeFOV's published PASCAL VOC
    values (Chen et al., ICLR 2015): bilateral kernel weight 4 (w1), spatial std 121 px (theta_alpha),
    colour std 5 (theta_beta); Gaussian kernel weight 3 (w2), std 3 px (theta_gamma). ``bi_xy_std``
    is given at VOC scale and scaled to each image's longer side (``bi_xy_std * max(H, W) / 500``), so
    it means the same on small images. DeepLab ran 10 mean-field iterations; 5 are nearly converged
    and twice as fast.
    """

    bi_w: float = DEFAULTS["eval"]["crf_params"]["bi_w"]
    bi_xy_std: float = DEFAULTS["eval"]["crf_params"]["bi_xy_std"]
    bi_rgb_std: float = DEFAULTS["eval"]["crf_params"]["bi_rgb_std"]
    pos_w: float = DEFAULTS["eval"]["crf_params"]["pos_w"]
    pos_xy_std: float = DEFAULTS["eval"]["crf_params"]["pos_xy_std"]
    iterations: int = DEFAULTS["eval"]["crf_params"]["iterations"]

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CRFParams:
        """From a config's (already validated) ``eval.crf_params`` mapping; missing keys keep their default."""
        return cls(**{key: value for key, value in settings.items() if key in cls.__dataclass_fields__})

    @classmethod
    def of_config(cls, config: dict[str, Any] | None, overrides: Sequence[str] = (), source: str = "config") -> CRFParams:
        """A run config's ``eval.crf_params`` (DeepLab's where it has none, as in runs from before the keys
        existed), then ``--set`` ``overrides``, validated; ``source`` names the config in an error."""
        return cls.from_settings(crf_settings(config, list(overrides), source))

    def settings(self) -> dict[str, Any]:
        """As the ``eval.crf_params`` mapping of a config."""
        return asdict(self)

    def describe(self) -> str:
        """One line: ``bi_w=4 bi_xy_std=121 ...``."""
        return " ".join(f"{key}={value:g}" for key, value in self.settings().items())


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
