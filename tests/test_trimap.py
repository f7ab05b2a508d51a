"""Trimap bands (boundary vs interior mIoU, the paper's Fig. 4) and the `boxsup eval` analyses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.synth import DEMO_CLASSES, generate_dataset
from boxsup.evaluation.evaluate import checkpoint_labels
from boxsup.evaluation.trimap import TrimapConfusion, band_masks, boundary_distance, format_trimap_table
from boxsup.models import build_model

VOID = 255


def two_halves() -> np.ndarray:
    """GT 4x8: columns 0-3 class 0, columns 4-7 class 1."""
    gt = np.zeros((4, 8), np.uint8)
    gt[:, 4:] = 1
    return gt


def test_distance_to_the_other_label() -> None:
    assert boundary_distance(two_halves())[0].tolist() == [4, 3, 2, 1, 1, 2, 3, 4]
    diagonal = np.zeros((3, 3), np.uint8)
    diagonal[2, 2] = 1
    assert boundary_distance(diagonal)[0, 0] == pytest.approx(np.hypot(2, 2))  # Euclidean, not city-block


def test_one_label_and_the_image_border_make_no_band() -> None:
    assert np.isinf(boundary_distance(np.full((5, 5), 2, np.uint8))).all()
    band, = band_masks(np.full((5, 5), 2, np.uint8), [3])
    assert not band.any()


def test_band_and_interior_iou_on_a_hand_made_case() -> None:
    gt = two_halves()
    pred = np.zeros_like(gt)
    pred[:, 5:] = 1  # column 4 (class 1, next to the boundary) predicted 0: a boundary error
    pred[0, 0] = 1  # one interior error, far from the boundary
    trimap = TrimapConfusion(2, [10, 1, 2, 2])
    trimap.update(pred, gt)
    w1, w2, w10 = trimap.compute()
    assert [s.width for s in (w1, w2, w10)] == [1, 2, 10]
    # width 1: band = columns 3-4. Class 0: TP 4 (col 3), predicted 8 (cols 3-4) -> 4/8; class 1: TP 0 -> 0.
    assert w1.boundary.class_iou.tolist() == [0.5, 0.0] and w1.boundary.miou == 0.25
    # interior = columns 0-2 and 5-7: class 0 TP 11 of 12 GT, 11 predicted -> 11/12; class 1 12/13
    assert w1.interior.class_iou.tolist() == pytest.approx([11 / 12, 12 / 13])
    assert w1.band_fraction == pytest.approx(8 / 32)
    # width 2: band = columns 2-5. Class 0: TP 8, predicted 12 -> 8/12; class 1: TP 4, GT 8, predicted 4 -> 4/8
    assert w2.boundary.class_iou.tolist() == pytest.approx([8 / 12, 0.5])
    assert w2.interior.class_iou.tolist() == pytest.approx([7 / 8, 8 / 9])
    # width 10: every pixel in the band, the interior empty
    assert w10.band_fraction == 1.0 and np.isnan(w10.interior.miou) and trimap.interior[10].matrix.sum() == 0


def test_void_bounds_bands_and_is_never_scored() -> None:
    gt = np.zeros((4, 9), np.uint8)
    gt[:, 4] = VOID  # the void outline VOC draws between objects
    gt[:, 5:] = 1
    gt[3, 0] = VOID  # a void pixel in the interior too
    band, = band_masks(gt, [1])
    expected = np.zeros_like(band)
    expected[:, [3, 5]] = True  # next to the void column; the void itself is not in the band
    expected[2, 0] = expected[3, 1] = True  # and around the interior void pixel
    assert (band == expected).all()
    pred = np.where(gt == VOID, 0, gt).astype(np.uint8)  # right wherever GT is labelled, anything on void
    trimap = TrimapConfusion(2, [1, 3])
    trimap.update(pred, gt)
    labelled = int((gt != VOID).sum())
    for width in (1, 3):
        assert trimap.band[width].matrix.sum() + trimap.interior[width].matrix.sum() == labelled
    for scores in trimap.compute():
        assert scores.boundary.miou == 1.0 and scores.interior.miou == 1.0


def test_accumulates_over_images() -> None:
    gt = two_halves()
    trimap = TrimapConfusion(2, [1])
    trimap.update(gt, gt)
    trimap.update(1 - gt, gt)  # all wrong
    (w1,) = trimap.compute()
    assert trimap.band[1].matrix.sum() == 16 and w1.boundary.class_iou.tolist() == [1 / 3, 1 / 3]


def test_table_has_a_row_per_width_and_two_columns_per_model() -> None:
    trimap = TrimapConfusion(2, [1, 2])
    trimap.update(two_halves(), two_halves())
    table = format_trimap_table({"a": trimap.compute(), "b": trimap.compute()}).splitlines()
    assert table[0].split() == ["width", "px", "band", "%", "a", "boundary", "a", "interior", "b", "boundary", "b", "interior"]
    assert table[1].split() == ["1", "25.0", "1.0000", "1.0000", "1.0000", "1.0000"] and len(table) == 3


def test_checkpoint_labels() -> None:
    assert checkpoint_labels(["runs/vocmask/checkpoint.pt", "s3://b/runs/coco/checkpoint.pt", "best.pt"]) == \
        ["vocmask", "coco", "best"]
    assert checkpoint_labels(["a/x.pt", "b/x.pt"]) == ["x (1)", "x (2)"]


# ---------------------------------------------------------------- boxsup eval --trimap / --crf-search


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analyses") / "data"
    generate_dataset(root, n_images=4, size=48, seed=0)  # val: one image
    return root


def checkpoint(path: Path, root: Path, seed: int, *overrides: str) -> str:
    torch.manual_seed(seed)
    cfg = load_config(None, [f"data.root={root}", "model.backbone=small", "model.weights=none", *overrides])
    path.parent.mkdir(parents=True)
    torch.save({"model": build_model("small", len(DEMO_CLASSES) + 1, "none").state_dict(), "config": cfg,
                "classes": list(DEMO_CLASSES)}, path)
    return str(path)


def test_eval_trimap_prints_the_table_and_writes_one_figure(data, tmp_path, capsys) -> None:
    a = checkpoint(tmp_path / "runs" / "masks" / "checkpoint.pt", data, 0)
    b = checkpoint(tmp_path / "runs" / "boxes" / "checkpoint.pt", data, 1, "eval.crf_params.bi_w=5")
    figure = tmp_path / "out" / "fig4.png"
    argv = ["eval", "--checkpoint", a, b, "--data", str(data), "--trimap", "3", "1", "--figure", str(figure), "--crf"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"masks ({a}): mIoU ") and lines[0].endswith("CRF bi_w=4 bi_xy_std=121 bi_rgb_std=5 "
                                                                          "pos_w=3 pos_xy_std=3 iterations=5")
    assert "CRF bi_w=5 " in lines[1]  # each checkpoint's own saved CRF settings
    assert lines[2].split()[4:] == ["masks", "boundary", "masks", "interior", "boxes", "boundary", "boxes", "interior"]
    assert [line.split()[0] for line in lines[3:5]] == ["1", "3"] and lines[5] == f"wrote {figure}"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in figure.parent.iterdir()] == ["fig4.png"]


def test_eval_crf_search_prints_every_point_and_the_best(data, tmp_path, capsys) -> None:
    a = checkpoint(tmp_path / "run" / "checkpoint.pt", data, 0)
    argv = ["eval", "--checkpoint", a, "--data", str(data), "--crf-search", "--grid", "bi_w=3,5", "iterations=1,2"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"CRF search for {a} on val: 1 image, 4 grid points; without CRF mIoU ")
    rows = [line.split() for line in out[2:6]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and {(r[2], r[7]) for r in rows} == {("3", "1"), ("3", "2"),
                                                                                           ("5", "1"), ("5", "2")}
    assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)
    flags = out[out.index("best, as flags (boxsup eval / boxsup train):") + 1].split()
    assert flags[0] == "--set" and flags[1] == f"eval.crf_params.bi_w={rows[0][2]}"
    load_config(None, ["data.root=/d", *flags[1:]])  # pastes into a config as it is


@pytest.mark.parametrize("extra, message", [
    (["--figure", "f.png"], "eval: --figure goes with --trimap"),
    (["--grid", "bi_w=3"], "eval: --grid, --images and --workers go with --crf-search"),
    (["--trimap", "0", "3"], "--trimap: must be whole numbers >= 1, got 0"),
    (["--trimap", "3", "--crf-search"], "eval: --crf-search and --trimap are separate analyses"),
    (["--crf-search", "--crf"], "eval --crf-search: give one --checkpoint and no --crf"),
    (["--crf-search", "--grid", "bi_w=-1"], "--grid bi_w=-1: config key eval.crf_params.bi_w: must be > 0"),
    (["--set", "eval.crf_params.iterations=0.5"], "config key eval.crf_params.iterations: expected int, got 0.5"),
    (["--set", "eval.scales=[1]"], "boxsup eval takes only eval.crf_params.* keys"),
])  # fmt: skip
def test_eval_flag_mistakes_are_one_line_errors(data, tmp_path, capsys, extra, message) -> None:
    argv = ["eval", "--checkpoint", str(tmp_path / "not-read.pt"), "--data", str(data), *extra]
    assert main(argv) == 2  # refused before the (missing) checkpoint is read
    err = capsys.readouterr().err
    assert err.startswith("boxsup: error: ") and message in err and err.count("\n") == 1


# ---------------------------------------------------------------- boxsup eval --config (any format)


def test_eval_scores_a_configs_coco_val_source_as_its_voc_original(data, tmp_path, capsys) -> None:
    from boxsup.data.to_coco import write_coco_copy

    coco = tmp_path / "coco"
    write_coco_copy(data, coco, classes=DEMO_CLASSES)
    source = {"name": "coco", "format": "coco", "root": str(coco), "annotations": "annotations/instances_{}.json",
              "images": "{}", "supervision": "box"}
    config = tmp_path / "coco.yaml"
    config.write_text(yaml.safe_dump({"data": {"classes": list(DEMO_CLASSES),
                                               "sources": [source | {"annotations": "annotations/instances_train.json",
                                                                     "images": "train"}],
                                               "val": source | {"annotations": "annotations/instances_val.json",
                                                                "images": "val", "supervision": "mask"}}}))
    a = checkpoint(tmp_path / "run" / "checkpoint.pt", data, 0)
    assert main(["eval", "--checkpoint", a, "--data", str(data)]) == 0
    from_voc = capsys.readouterr().out
    assert main(["eval", "--checkpoint", a, "--config", str(config)]) == 0
    assert capsys.readouterr().out == from_voc  # the same images and masks, read from COCO JSON by pycocotools
    assert main(["eval", "--checkpoint", a, "--config", str(config), "--split", "val"]) == 2
    assert "the split is the config's data.val; change it with --set data.val.split" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", a, "--data", str(data), "--set", "data.val.split=x"]) == 2
    assert "without --config, boxsup eval takes only eval.crf_params.* keys" in capsys.readouterr().err
