"""``boxsup eval --out FILE``: the scores and what they were measured on, as JSON; and the scores of a
checkpoint whose MLflow run is known logged into that run as ``eval_*`` metrics, its ``val_miou`` untouched."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from boxsup.cli import EVAL_TAG, main
from boxsup.config import load_config
from boxsup.data.synth import generate_dataset
from boxsup.platform.launch import run_boxsup


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One in-process run (mask supervision, 1 epoch: no proposals, no Ray) with its MLflow model."""
    root = tmp_path_factory.mktemp("eval_output")
    generate_dataset(root / "data", n_images=8, size=48, seed=5)
    raw = {"seed": 0, "data": {"root": str(root / "data"), "crop_size": 48, "supervision": "mask"},
           "model": {"backbone": "small", "weights": "none"},
           "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "num_threads": 1},
           "ray": {"num_workers": 0},
           "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "scored", "run_name": "r"},
           "output": {"dir": str(root / "runs")}}
    (root / "run.yaml").write_text(yaml.safe_dump(raw))
    result = run_boxsup(load_config(root / "run.yaml"), progress=False)
    return {"uri": raw["tracking"]["uri"], "run_id": result.run_id, "run_dir": Path(result.run_dir),
            "data": root / "data", "config": root / "run.yaml", "val_miou": result.val_miou}


def run_metrics(trained) -> dict[str, float]:
    return MlflowClient(trained["uri"]).get_run(trained["run_id"]).data.metrics


def printed_scores(out: str) -> tuple[float, float]:
    line = next(line for line in out.splitlines() if line.startswith("mIoU "))
    _, miou, _, _, accuracy = line.split()
    return float(miou), float(accuracy)


def test_eval_out_of_a_runs_uri_writes_the_json_and_logs_eval_metrics_to_the_run(trained, tmp_path, capsys, caplog):
    uri = f"runs:/{trained['run_id']}/model"
    out = tmp_path / "scores" / "eval.json"  # its folder is made
    before = run_metrics(trained)
    assert main(["eval", "--checkpoint", uri, "--data", str(trained["data"]), "--tracking-uri", trained["uri"],
                 "--scales", "0.75", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]  # written atomically: no temporary left

    assert (round(record["miou"], 4), round(record["pixel_accuracy"], 4)) == printed_scores(printed)
    assert list(record["class_iou"]) == ["background", *(trained["data"] / "classes.txt").read_text().split()]
    assert all(v is None or 0 <= v <= 1 for v in record["class_iou"].values())
    assert record["checkpoint"] == uri  # as given
    assert record["data"] == {"root": str(trained["data"]), "split": "val"} and record["images"] == 2
    assert record["scales"] == [0.75, 1.0] and record["crf"] is False and record["crf_params"] is None
    assert datetime.fromisoformat(record["date"]).tzinfo is not None
    assert record["boxsup_version"] == version("boxsup")
    assert record["mlflow_run"] == {"run_id": trained["run_id"], "tracking_uri": trained["uri"]}

    after = run_metrics(trained)
    assert after["val_miou"] == before["val_miou"]  # the training run's own score stays
    assert after["eval_miou"] == pytest.approx(record["miou"])
    assert after["eval_pixel_accuracy"] == pytest.approx(record["pixel_accuracy"])
    assert after["eval_iou_background"] == pytest.approx(record["class_iou"]["background"])
    tag = json.loads(MlflowClient(trained["uri"]).get_run(trained["run_id"]).data.tags[EVAL_TAG])
    assert tag["checkpoint"] == uri and tag["scales"] == [0.75, 1.0] and tag["data"] == record["data"]
    assert f"to MLflow run {trained['run_id']}" in caplog.text  # a message on stderr; stdout holds the scores


def test_a_run_directorys_checkpoint_logs_to_its_run_each_eval_a_step(trained, tmp_path, caplog):
    checkpoint = str(trained["run_dir"] / "checkpoint.pt")
    client = MlflowClient(trained["uri"])
    steps = len(client.get_metric_history(trained["run_id"], "eval_miou"))
    for _ in range(2):  # the store comes from the run directory's run.json: no --tracking-uri
        assert main(["eval", "--checkpoint", checkpoint, "--data", str(trained["data"]), "--crf",
                     "--set", "eval.crf_params.iterations=2", "--out", str(tmp_path / "e.json")]) == 0
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["checkpoint"] == checkpoint and record["crf"] is True
    assert record["crf_params"]["iterations"] == 2 and "bi_w" in record["crf_params"]
    assert record["mlflow_run"] == {"run_id": trained["run_id"], "tracking_uri": trained["uri"]}
    history = client.get_metric_history(trained["run_id"], "eval_miou")
    assert sorted(m.step for m in history)[-2:] == [steps, steps + 1]
    assert caplog.text.count("logged eval_miou") == 2


def test_a_copied_checkpoint_or_no_log_to_run_logs_nothing(trained, tmp_path, caplog):
    copy = tmp_path / "copy" / "checkpoint.pt"  # a run directory's name, but no run.json beside it
    copy.parent.mkdir()
    shutil.copy(trained["run_dir"] / "checkpoint.pt", copy)
    before = MlflowClient(trained["uri"]).get_run(trained["run_id"]).data.metrics
    assert main(["eval", "--checkpoint", str(copy), "--data", str(trained["data"]), "--out",
                 str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["mlflow_run"] is None
    assert main(["eval", "--checkpoint", f"runs:/{trained['run_id']}/model", "--data", str(trained["data"]),
                 "--tracking-uri", trained["uri"], "--no-log-to-run", "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["mlflow_run"] is None
    assert MlflowClient(trained["uri"]).get_run(trained["run_id"]).data.metrics == before
    assert "logged eval_miou" not in caplog.text


def test_a_registered_model_version_logs_to_its_source_run(trained, tmp_path):
    import mlflow

    from boxsup.serving.trained_model import mlflow_store

    with mlflow_store(trained["uri"]):
        number = mlflow.register_model(f"runs:/{trained['run_id']}/model", "scored-eval").version
    assert main(["eval", "--checkpoint", f"models:/scored-eval/{number}", "--data", str(trained["data"]),
                 "--tracking-uri", trained["uri"], "--out", str(tmp_path / "m.json")]) == 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["mlflow_run"] == {"run_id": trained["run_id"], "tracking_uri": trained["uri"]}
    assert run_metrics(trained)["eval_miou"] == pytest.approx(record["miou"])


def test_several_checkpoints_make_a_list_and_a_config_names_its_val_source(trained, tmp_path):
    checkpoint = str(trained["run_dir"] / "checkpoint.pt")
    out = tmp_path / "both.json"
    assert main(["eval", "--checkpoint", checkpoint, f"runs:/{trained['run_id']}/model", "--config",
                 str(trained["config"]), "--tracking-uri", trained["uri"], "--no-log-to-run", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["checkpoint"] for r in records] == [checkpoint, f"runs:/{trained['run_id']}/model"]
    assert records[0]["miou"] == records[1]["miou"]  # the same network
    data = records[0]["data"]
    assert data["config"] == str(trained["config"])
    assert data["val"]["root"] == str(trained["data"]) and data["val"]["split"] == "val"


def test_out_goes_with_the_plain_evaluation_and_is_checked_first(trained, tmp_path, capsys):
    checkpoint = str(trained["run_dir"] / "checkpoint.pt")
    assert main(["eval", "--checkpoint", checkpoint, "--data", str(trained["data"]), "--trimap", "1",
                 "--out", str(tmp_path / "t.json")]) == 2
    assert "--out records the plain evaluation's scores" in capsys.readouterr().err
    (tmp_path / "dir.json").mkdir()
    assert main(["eval", "--checkpoint", checkpoint, "--data", str(trained["data"]),
                 "--out", str(tmp_path / "dir.json")]) == 2
    assert capsys.readouterr().err.startswith(f"boxsup: error: --out {tmp_path / 'dir.json'}: is a directory")
