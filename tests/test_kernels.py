"""``train.deterministic``'s forms of upsampling and loss give ``F.interpolate``'s and ``F.cross_entropy``'s
values and gradients; the setting is refused for networks it cannot make deterministic; a CPU process's
kernels are left as they are. (Bitwise-repeatable GPU runs: ``tests/test_ray_gpu.py``.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from boxsup.models.kernels import (
    DETERMINISTIC_BACKBONES,
    bilinear_resize,
    configure_kernels,
    gathered_cross_entropy,
    untuned_cudnn,
)
from test_bad_input import cli_error, data, pristine  # noqa: F401
from test_bad_input_runs import tiny_run


@pytest.mark.parametrize("sizes", [((41, 41), (321, 321)), ((47, 63), (375, 500)), ((8, 10), (64, 80)),
                                   ((10, 10), (7, 3)), ((5, 7), (5, 7))])
def test_the_matrix_upsampling_is_bilinear_interpolation(sizes):
    (h, w), size = sizes
    torch.manual_seed(0)
    x = torch.randn(2, 3, h, w, requires_grad=True)
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    got = bilinear_resize(x, size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(expected)
    expected_grad, = torch.autograd.grad((expected * weights).sum(), x)
    got_grad, = torch.autograd.grad((got * weights).sum(), x)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_the_gathered_loss_is_cross_entropy_with_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, requires_grad=True)
    targets = torch.randint(0, 5, (2, 6, 7))
    targets[0, :3] = 255
    expected = F.cross_entropy(logits, targets, ignore_index=255)
    got = gathered_cross_entropy(logits, targets, 255)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(expected, logits)[0])
    assert torch.isnan(gathered_cross_entropy(logits, torch.full_like(targets, 255), 255))  # as F.cross_entropy


def test_a_cpu_process_keeps_its_kernels():
    before = torch.backends.cudnn.benchmark
    configure_kernels(torch.device("cpu"), deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark == before
    torch.backends.cudnn.benchmark = True
    try:
        with untuned_cudnn():
            assert not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


def test_deterministic_training_is_refused_for_torchvision_heads(data, tmp_path, tiny_config, capsys):  # noqa: F811
    config = tiny_run(tiny_config, data, train__deterministic=True, model__backbone="deeplabv3_mobilenet_v3_large",
                      model__weights="none")
    err = cli_error(capsys, ["train", "--config", str(config)])
    assert err.startswith("boxsup: error: train.deterministic: not available for model.backbone deeplabv3_mobilenet_v3_large")
    assert " or ".join(DETERMINISTIC_BACKBONES) in err
    assert not (tmp_path / "runs").exists()
