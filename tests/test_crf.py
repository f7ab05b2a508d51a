"""Tests for dense CRF refinement and test-time prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from boxsup.config import BOUNDS, DEFAULTS, crf_settings, load_config
from boxsup.errors import BoxSupError
from boxsup.evaluation.crf import RANGES, CRFParams, dense_crf
from boxsup.evaluation.crf_search import DEFAULT_GRID, grid_points, parse_grid, score_grid
from boxsup.evaluation.inference import MULTI_SCALE, predict_label_map, predict_probs
from boxsup.models import build_model


@pytest.fixture()
def two_regions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 48x64 image with two flat colours, its true labels and noisy 2-class probabilities."""
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 64), dtype=np.int64)
    labels[:, 28:] = 1
    image = np.where(labels[..., None] == 1, [200, 40, 40], [30, 60, 180]).astype(np.uint8)
    fg = np.clip(np.where(labels == 1, 0.65, 0.35) + rng.normal(0, 0.25, labels.shape), 0.01, 0.99)
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    return image, labels, probs


def test_crf_improves_noisy_probabilities(two_regions) -> None:
    image, labels, probs = two_regions
    refined = dense_crf(image, probs)
    before = (probs.argmax(0) == labels).mean()
    after = (refined.argmax(0) == labels).mean()
    assert before < 0.9 and after > before and after > 0.98


def test_crf_output_is_a_distribution(two_regions) -> None:
    image, _, probs = two_regions
    refined = dense_crf(image, probs, CRFParams(iterations=2, bi_xy_std=20.0))
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)


def test_crf_accepts_non_contiguous_inputs(two_regions) -> None:
    image, _, probs = two_regions
    refined = dense_crf(image[:, ::-1], probs[:, :, ::-1].astype(np.float64))
    assert refined.shape == probs.shape


def test_crf_rejects_mismatched_image(two_regions) -> None:
    image, _, probs = two_regions
    with pytest.raises(ValueError, match="does not match"):
        dense_crf(image[:10], probs)


def test_predict_probs_multi_scale() -> None:
    torch.manual_seed(0)
    model = build_model("small", num_classes=4).train()
    image = np.random.default_rng(1).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    probs = predict_probs(model, image, scales=MULTI_SCALE)
    assert probs.shape == (4, 37, 53)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert model.training


def test_predict_label_map_with_crf() -> None:
    model = build_model("small", num_classes=3)
    image = np.random.default_rng(2).integers(0, 256, size=(33, 40, 3), dtype=np.uint8)
    labels = predict_label_map(model, image, crf=True)
    assert labels.shape == (33, 40) and labels.dtype == np.uint8 and labels.max() < 3


def test_crf_accepts_a_read_only_image(two_regions) -> None:
    image, labels, probs = two_regions
    image.flags.writeable = False  # as decoded dataset images may be
    assert (dense_crf(image, probs).argmax(0) == labels).mean() > 0.98


# ---------------------------------------------------------------- parameters as config keys


def test_crf_defaults_are_deeplab_largefov_values() -> None:
    assert CRFParams().settings() == DEFAULTS["eval"]["crf_params"]
    assert CRFParams().settings() == {"bi_w": 4.0, "bi_xy_std": 121.0, "bi_rgb_std": 5.0, "pos_w": 3.0,
                                      "pos_xy_std": 3.0, "iterations": 5}


def test_crf_params_change_the_result(two_regions) -> None:
    image, _, probs = two_regions
    weak = dense_crf(image, probs, CRFParams(bi_w=0.01, pos_w=0.01, iterations=1))
    np.testing.assert_allclose(weak, probs / probs.sum(0), atol=0.02)  # nearly no pairwise term: the unaries


@pytest.mark.parametrize("override, message", [
    ("eval.crf_params.bi_w=0", "config key eval.crf_params.bi_w: must be > 0, got 0.0"),
    ("eval.crf_params.bi_xy_std=-5", "config key eval.crf_params.bi_xy_std: must be > 0, got -5.0"),
    ("eval.crf_params.bi_rgb_std=.nan", "config key eval.crf_params.bi_rgb_std: expected a finite float"),
    ("eval.crf_params.pos_w=x", "config key eval.crf_params.pos_w: expected a finite float, got 'x'"),
    ("eval.crf_params.iterations=2.5", "config key eval.crf_params.iterations: expected int, got 2.5"),
    ("eval.crf_params.iterations=0", "config key eval.crf_params.iterations: must be > 0, got 0"),
    ("eval.crf_params.sxy=3", "unknown config key 'eval.crf_params.sxy'"),
])  # fmt: skip
def test_bad_crf_params_are_one_line_errors(override, message) -> None:
    with pytest.raises(BoxSupError) as err:
        load_config(None, ["data.root=/d", override])
    assert message in str(err.value) and "\n" not in str(err.value)
    key, text = override.split("=", 1)  # the same value in a saved run's config (a checkpoint, an MLflow model)
    saved = {"eval": {"crf_params": {key.removeprefix("eval.crf_params."): yaml.safe_load(text)}}}
    with pytest.raises(BoxSupError) as from_saved:
        CRFParams.of_config(saved, f"--set {override}")
    assert str(from_saved.value) == str(err.value)  # CRFParams checks its values as the config does


def test_the_config_takes_the_crf_defaults_and_ranges_from_crf_params() -> None:
    assert {key: BOUNDS[f"eval.crf_params.{key}"] for key in DEFAULTS["eval"]["crf_params"]} == RANGES
    assert CRFParams.checked("bi_w", "1e-3", "src") == 0.001 and CRFParams.checked("iterations", 7, "src") == 7


def test_crf_params_from_a_config_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: {root: /d}\neval: {crf: true, crf_params: {bi_w: 5, iterations: 10}}\n")
    cfg = load_config(path)
    assert CRFParams.from_settings(cfg["eval"]["crf_params"]) == CRFParams(bi_w=5.0, iterations=10)


def test_eval_crf_settings_come_from_the_checkpoint_then_set() -> None:
    saved = load_config(None, ["data.root=/d", "eval.crf_params.bi_w=6", "eval.crf_params.pos_w=2"])
    assert crf_settings(saved, [], "ckpt")["bi_w"] == 6.0
    settings = crf_settings(saved, ["eval.crf_params.bi_w=3"], "ckpt")
    assert (settings["bi_w"], settings["pos_w"], settings["iterations"]) == (3.0, 2.0, 5)
    older = {"model": {"backbone": "small"}, "eval": {"crf": False}}  # saved before the keys existed
    assert crf_settings(older, [], "ckpt") == DEFAULTS["eval"]["crf_params"]
    with pytest.raises(BoxSupError, match=r"^ckpt: config key eval.crf_params.bi_w: must be > 0"):
        crf_settings({"eval": {"crf_params": {"bi_w": -1}}}, [], "ckpt")
    with pytest.raises(BoxSupError, match=r"--set train.lr=1: boxsup eval takes only eval.crf_params.\* keys"):
        crf_settings(None, ["train.lr=1"], "ckpt")


# ---------------------------------------------------------------- grid search


def test_parse_grid_checks_names_and_values() -> None:
    grid = parse_grid(["bi_w=3,4,4", "eval.crf_params.iterations=5,10"])
    assert grid == {"bi_w": [3.0, 4.0], "iterations": [5, 10]}
    for spec, message in [("bi_w", "expected NAME=V1,V2"), ("sxy=3", "'sxy' is not a CRF parameter"),
                          ("bi_w=3,", "an empty value"), ("iterations=2.5", "expected int, got 2.5"),
                          ("bi_w=0,1", "must be > 0, got 0.0")]:
        with pytest.raises(BoxSupError, match=message):
            parse_grid([spec])
    with pytest.raises(BoxSupError, match="bi_w is given twice"):
        parse_grid(["bi_w=3", "bi_w=4"])


def test_default_grid_brackets_the_defaults() -> None:
    points = grid_points(CRFParams(iterations=7), DEFAULT_GRID)
    assert len(points) == 27 and len(set(points)) == 27
    assert CRFParams(iterations=7) in points and all(p.iterations == 7 and p.pos_w == 3.0 for p in points)


def test_score_grid_ranks_every_point_and_finds_the_best(two_regions) -> None:
    image, labels, probs = two_regions
    no_op = CRFParams(bi_w=0.01, pos_w=0.01, iterations=1)  # the noisy unaries stay as they are
    points = [no_op, CRFParams(), CRFParams(bi_rgb_std=3.0)]
    samples = [(image, probs, labels.astype(np.uint8)), (image[:, ::-1], probs[:, :, ::-1], labels[:, ::-1].astype(np.uint8))]
    result = score_grid(samples, points, num_classes=2, progress=False)
    assert result.images == 2 and {p for p, _ in result.ranked} == set(points) and len(result.ranked) == 3
    scores = [s.miou for _, s in result.ranked]
    assert scores == sorted(scores, reverse=True) and result.best != no_op and scores[0] > 0.95
    assert abs(dict(result.ranked)[no_op].miou - result.without_crf.miou) < 0.02
    flags = [f"eval.crf_params.{k}={v}" for k, v in result.best.settings().items()]
    assert CRFParams.from_settings(load_config(None, ["data.root=/d", *flags])["eval"]["crf_params"]) == result.best


def test_score_grid_in_worker_processes_matches(two_regions) -> None:
    image, labels, probs = two_regions
    points = [CRFParams(), CRFParams(bi_w=3.0, iterations=2)]
    samples = [(image, probs, labels.astype(np.uint8))] * 3
    alone = score_grid(samples, points, 2, workers=1, progress=False)
    pooled = score_grid(samples, points, 2, workers=2, progress=False)
    assert [(p, s.miou) for p, s in alone.ranked] == [(p, s.miou) for p, s in pooled.ranked]
