"""Bad input data that used to give wrong results without a word: each is now one line, or a counted,
logged skip that names the file and says the true cause.

Validation images without masks, truncated training JPEGs, damaged proposal files, proposal stores
of another candidate cap, zero-width boxes, and box problems logged once per command. The data is
``test_bad_input``'s tiny demo set (3 training images, 1 validation image of 48 px).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.coco import CocoDataset
from boxsup.data.dataset import MissingMaskError
from boxsup.data.sources import SourceSpec, open_source
from boxsup.data.synth import DEMO_CLASSES
from boxsup.data.to_coco import write_coco_copy
from boxsup.evaluation.evaluate import evaluate
from boxsup.models import build_model
from boxsup.proposals.store import ProposalStore
from test_bad_input import (  # noqa: F401
    ID,
    box,
    cli_error,
    data,
    dataset,
    jpeg,
    one_line,
    png,
    pristine,
    raises_one_line,
    save_checkpoint,
    set_objects,
    snapshot,
    train_config,
)

VAL_ID = "synth_000003"  # the one validation image
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# A box crossing the right border (clipped), a zero-width one (xmin = xmax), a good one.
CLIPPED_ZERO_GOOD = box("ring", 30, 20, 70, 60) + box("star", 5, 5, 5, 20) + box("ring", 2, 2, 20, 20)


def warnings_naming(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


def proposals_cli(data_root: Path, out: Path, *flags: str) -> list[str]:
    return ["proposals", "--local", "--data", str(data_root), "--out", str(out), *flags]


# ---------------------------------------------------------------- a validation image without a mask


def test_train_refuses_a_validation_image_without_a_mask_before_any_run_starts(data, tmp_path, tiny_config, capsys):
    png(data, VAL_ID).unlink()
    assert main(["train", "--config", str(train_config(tiny_config, data))]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{VAL_ID}.jpg: validation image without a mask: a score must count every image" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()  # no run, no MLflow run


@pytest.mark.parametrize("where", ["--data", "--config"])
def test_eval_refuses_a_validation_image_without_a_mask(data, tmp_path, tiny_config, capsys, where):
    checkpoint = save_checkpoint(tmp_path / "checkpoint.pt", data)
    png(data, VAL_ID).unlink()
    split = str(data) if where == "--data" else str(tiny_config(data))
    err = cli_error(capsys, ["eval", "--checkpoint", str(checkpoint), where, split])
    assert f"{VAL_ID}.jpg: validation image without a mask" in err and "val.txt" in err
    assert "mIoU" not in capsys.readouterr().out  # no score printed


def test_evaluate_itself_refuses_an_image_without_a_mask(data):
    png(data, VAL_ID).unlink()
    ds = dataset(data, "val")
    model = build_model("small", ds.num_classes, "none")
    raises_one_line(lambda: evaluate(model, ds, torch.device("cpu"), progress=False),
                    f"{VAL_ID}.jpg: validation image without a mask", MissingMaskError)


def test_data_check_lists_a_validation_image_without_a_mask(data, tiny_config, capsys):
    png(data, VAL_ID).unlink()
    assert main(["data", "check", "--config", str(tiny_config(data))]) == 0
    out = capsys.readouterr().out
    assert "no problems found" not in out
    assert f"1 x validation image without a mask: a score must count every image; e.g. {jpeg(data, VAL_ID)}" in out
    assert "| data | val | 1 | 0 | 0 | 0 | 1 |" in out  # not usable for a score


def test_a_coco_validation_image_without_objects_is_all_background_and_one_without_outlines_refused(data, tmp_path):
    write_coco_copy(data, tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "instances_val.json"
    instances = json.loads(path.read_text())
    spec = SourceSpec("val", "coco", str(tmp_path / "coco"), annotations=str(path), images="val")
    outlined = next(a for a in instances["annotations"] if not a["iscrowd"])
    path.write_text(json.dumps({**instances, "annotations": []}))  # no object at all: all background
    ds = open_source(spec, DEMO_CLASSES, scored=True)
    assert ds.load_annotations(skip_bad=False)[0].has_mask and not ds.mask(VAL_ID).any()
    path.write_text(json.dumps({**instances, "annotations": [{**outlined, "segmentation": []}]}))  # no outline
    ds = open_source(spec, DEMO_CLASSES, scored=True)
    raises_one_line(lambda: ds.load_annotations(skip_bad=False), f"{VAL_ID}.jpg: validation image without a mask",
                    MissingMaskError)


# ---------------------------------------------------------------- a training JPEG whose data is cut off


def test_a_truncated_training_jpeg_is_left_out_counted_and_named_with_its_cause(data, tmp_path, tiny_config, caplog):
    jpeg(data).write_bytes(jpeg(data).read_bytes()[:-100])  # the header reads, the pixels do not
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--config", str(train_config(tiny_config, data))]) == 0
    assert "proposal file missing" not in caplog.text  # the old, wrong cause
    named = warnings_naming(caplog, f"{jpeg(data)}: cannot decode image (image file is truncated")
    assert named and all(ID in line for line in named)
    assert any("no proposal pool, left out of training" in line for line in named)  # the round's skip says why
    assert ID not in {p.stem for p in (tmp_path / "runs" / "r" / "labels" / "round_000").glob("*.png")}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "skipped_images")] == [1.0]


# ---------------------------------------------------------------- damaged proposal files


def test_boxsup_proposals_makes_damaged_pool_files_again(data, tmp_path, capsys, caplog):
    out = tmp_path / "store"
    assert main(proposals_cli(data, out, "--method", "rectangles")) == 0
    (out / f"{ID}.npz").write_bytes(b"garbage")
    cut = out / "synth_000002.npz"
    cut.write_bytes(cut.read_bytes()[:-40])  # a copy cut short: its zip directory is gone
    whole = (out / "synth_000004.npz").read_bytes()
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(proposals_cli(data, out, "--method", "rectangles")) == 0
    assert f"{out}: 2 made, 1 already there, skipped: none" in capsys.readouterr().out
    assert warnings_naming(caplog, f"{ID}.npz: corrupt proposal file") and warnings_naming(caplog, f"{cut}: corrupt")
    store = ProposalStore(out)
    assert all(store.load(image_id).n_candidates for image_id in (ID, "synth_000002"))  # readable again
    assert (out / "synth_000004.npz").read_bytes() == whole  # the whole file was left alone


# ---------------------------------------------------------------- the candidate cap: one default, in the store's path


def test_runs_with_other_candidate_caps_get_default_stores_of_their_own(data, tmp_path):
    from boxsup.platform.launch import ensure_proposals  # imports Ray's modules; starts nothing

    ds = dataset(data)
    base = [f"data.root={data}", f"output.dir={tmp_path / 'runs'}", "proposals.method=rectangles", "ray.num_workers=0"]
    first = ensure_proposals(load_config(None, [*base, "proposals.max_candidates=50"]), ds, progress=False)
    before = snapshot(Path(first.root))
    second = ensure_proposals(load_config(None, [*base, "proposals.max_candidates=60"]), ds, progress=False)
    assert str(first.root).endswith("-train-rectangles-50") and str(second.root).endswith("-train-rectangles-60")
    assert second.stored_ids() == set(ds.ids) and second.read_meta()["max_candidates"] == 60
    assert snapshot(Path(first.root)) == before  # the first run's store is untouched


def test_a_store_built_with_the_cli_defaults_serves_the_demo_config(data, tmp_path):
    from boxsup.platform.launch import ensure_proposals

    out = tmp_path / "store"
    assert main(proposals_cli(data, out)) == 0  # every setting the CLI's default
    cfg = load_config(DEMO_CONFIG, [f"data.root={data}", f"proposals.store={out}", "ray.num_workers=0"])
    before = snapshot(out)
    assert ensure_proposals(cfg, dataset(data), progress=False).stored_ids() == set(dataset(data).ids)
    assert snapshot(out) == before  # accepted as it is: nothing refused, nothing rebuilt


# ---------------------------------------------------------------- zero-width boxes, and box problems logged once


@pytest.mark.parametrize("objects, also", [
    (box("star", 5, 5, 5, 20), {}),  # xmin = xmax
    (box("star", 5, 9, 20, 9), {}),  # ymin = ymax
    (box("star", 48, 5, 60, 20), {"box clipped to the image": 1}),  # xmin = xmax once clipped to the 48 px image
])  # fmt: skip
def test_a_zero_width_voc_box_is_a_counted_logged_skip(data, caplog, objects, also):
    set_objects(data, objects + box("ring", 2, 2, 20, 20))
    ds = dataset(data)
    with caplog.at_level(logging.WARNING):
        boxes = ds.annotation(ID).boxes
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(1, 1, 20, 20)]
    assert ds.skips.counts == {"zero-width box": 1, **also}
    assert len(warnings_naming(caplog, f"{ID}.xml object 0: zero-width box")) == 1


def test_a_coco_box_of_width_or_height_zero_is_a_counted_skip(data, tmp_path):
    write_coco_copy(data, tmp_path / "coco")
    path = tmp_path / "coco" / "annotations" / "instances_train.json"
    instances = json.loads(path.read_text())
    image = next(im["id"] for im in instances["images"] if im["file_name"].startswith(ID))
    objects = [a for a in instances["annotations"] if a["image_id"] == image and not a["iscrowd"]]
    objects[0]["bbox"][2] = 0
    path.write_text(json.dumps(instances))
    ds = CocoDataset(path, tmp_path / "coco" / "train", DEMO_CLASSES)
    assert len(ds.annotation(ID).boxes) == len(objects) - 1
    assert ds.skips.counts == {"zero-width box": 1}


def test_boxsup_train_logs_each_box_problem_once(data, tiny_config, caplog):
    set_objects(data, CLIPPED_ZERO_GOOD)
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--config", str(train_config(tiny_config, data))]) == 0
    assert len(warnings_naming(caplog, f"{ID}.xml object 0: box clipped to the image")) == 1
    assert len(warnings_naming(caplog, f"{ID}.xml object 1: zero-width box")) == 1


def test_boxsup_proposals_logs_each_box_problem_once_and_counts_them_at_the_end(data, tmp_path, capsys, caplog):
    set_objects(data, CLIPPED_ZERO_GOOD)
    with caplog.at_level(logging.WARNING):
        assert main(proposals_cli(data, tmp_path / "store", "--method", "rectangles")) == 0
    printed = capsys.readouterr().out
    assert "3 made" in printed and "1 x box clipped to the image" in printed and "1 x zero-width box" in printed
    assert len(warnings_naming(caplog, f"{ID}.xml object 0: box clipped to the image")) == 1
    assert len(warnings_naming(caplog, f"{ID}.xml object 1: zero-width box")) == 1


def test_boxsup_proposals_refuses_a_cap_out_of_range_before_writing(data, tmp_path, capsys):
    err = cli_error(capsys, proposals_cli(data, tmp_path / "store", "--max-candidates", "0"))
    assert "--max-candidates: must be" in err and "got 0" in err
    assert not (tmp_path / "store").exists()
