"""Segmentation networks."""

from boxsup.models.fcn import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_model,
    fit_problem,
    load_tensor_file,
    normalize_image,
    on_device,
    parameter_groups,
)

__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "build_model", "fit_problem", "load_tensor_file", "normalize_image", "on_device", "parameter_groups"]
