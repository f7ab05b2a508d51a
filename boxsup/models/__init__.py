"""Segmentation networks."""

from boxsup.models.fcn import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUT_STRIDES,
    build_model,
    check_model_settings,
    fit_problem,
    load_tensor_file,
    model_from_config,
    normalize_batch,
    normalize_image,
    on_device,
    parameter_groups,
)

__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "OUTPUT_STRIDES", "build_model", "check_model_settings",
           "fit_problem", "load_tensor_file", "model_from_config", "normalize_batch", "normalize_image", "on_device",
           "parameter_groups"]
