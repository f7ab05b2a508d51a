"""Bad input around whole runs: names taken twice, an unreachable tracking server, outputs that cannot
be written, model weights that do not fit, and what ``--resume`` may and may not change.

Each case ends with one line (exit 2) before the work, and nothing written or lost; or, where the
command is right, with the run as the user asked. Runs are in-process (``ray.num_workers`` 0), one
epoch on the tiny data set of ``test_bad_input``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.synth import generate_dataset
from boxsup.errors import BoxSupError
from boxsup.models import build_model
from boxsup.platform.launch import CLAIM_FILE, claim_run_dir, run_boxsup
from boxsup.platform.tracking import HTTP_LIMITS, RunLogger
from boxsup.utils.storage import open_location
from test_bad_input import cli_error, data, one_line, pristine, save_checkpoint, snapshot, workdir  # noqa: F401

DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port
HANG_GUARD = 300  # seconds: a subprocess that takes longer has hung (2 shared cores, two runs at once)


def boxsup(*argv: str, cwd: Path) -> subprocess.Popen:
    """``boxsup ARGV`` as its own process (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "boxsup.cli", *argv], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def tiny_run(tiny_config, data: Path, **overrides) -> Path:
    """A one-epoch in-process run's config (run ``r`` under ``<tmp>/runs``, MLflow in ``<tmp>/mlflow.db``)."""
    return tiny_config(data, ray__num_workers=0, **{"train__epochs": 1, **overrides})


def mlflow_runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id]) if experiment else []


# ---------------------------------------------------------------- one run directory per name


@pytest.mark.slow
def test_two_runs_of_one_name_started_together_get_one_directory(data, tmp_path, tiny_config):
    config = tiny_run(tiny_config, data)
    runs = [boxsup("train", "--config", str(config), cwd=tmp_path) for _ in range(2)]
    outputs = [run.communicate(timeout=HANG_GUARD) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], outputs
    winner, loser = (runs[codes.index(0)], outputs[codes.index(0)]), outputs[codes.index(2)]
    run_dir = tmp_path / "runs" / "r"
    line = loser[1].strip().splitlines()[-1]  # after the INFO lines of reading the data
    assert line.startswith(f"boxsup: error: {run_dir}: a run of this name") and "Traceback" not in loser[1], loser[1]
    (only,) = mlflow_runs(tmp_path)  # the refused run never reached MLflow
    assert only.info.status == "FINISHED"
    assert json.loads((run_dir / "run.json").read_text())["mlflow_run_id"] == only.info.run_id
    assert f"run {only.info.run_id}" in winner[1][0]
    assert json.loads((run_dir / CLAIM_FILE).read_text())["pid"] == winner[0].pid


def test_a_run_directory_on_s3_is_claimed_once(s3_endpoint):
    import boto3

    bucket = f"boxsup-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    run_dir = f"s3://{bucket}/runs/r"
    claim_run_dir(open_location(run_dir), run_dir)
    first = open_location(run_dir).read_bytes(CLAIM_FILE)
    with pytest.raises(BoxSupError, match=rf"^{run_dir}: a run of this name is starting") as err:
        claim_run_dir(open_location(run_dir), run_dir)
    one_line(str(err.value))
    assert open_location(run_dir).read_bytes(CLAIM_FILE) == first  # the first claim stands


def test_a_directory_holding_other_files_is_not_taken_for_a_run(data, tmp_path, tiny_config, capsys):
    """A run named like a folder of the output directory (its proposal stores) leaves it alone."""
    config = tiny_run(tiny_config, data, tracking__run_name="proposals")
    (tmp_path / "runs" / "proposals" / "store").mkdir(parents=True)
    (tmp_path / "runs" / "proposals" / "store" / "meta.json").write_text("{}")
    before = snapshot(tmp_path / "runs")
    assert "runs/proposals: holds files of no run" in cli_error(capsys, ["train", "--config", str(config)])
    assert snapshot(tmp_path / "runs") == before and not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------- an unreachable tracking server


def test_train_against_a_tracking_server_that_is_down_stops_at_once(data, tmp_path, tiny_config):
    config = tiny_run(tiny_config, data, tracking__uri=DOWN)
    run = boxsup("train", "--config", str(config), cwd=tmp_path)
    out, err = run.communicate(timeout=HANG_GUARD)  # it returns: no minutes of retries
    assert run.returncode == 2, err
    assert err.startswith(f"boxsup: error: {DOWN}: the MLflow tracking server does not answer (Connection refused)")
    assert err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # no run directory, no proposals


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  assign.k: {grid: [1]}\nnum_samples: 1\nmax_concurrent_trials: 1\n"
                    "resources_per_trial: {cpu: 1, gpu: 0}\n")
    return path


@pytest.mark.parametrize("command", [
    ["sweep", "--space", "SPACE", "--config", "CONFIG"],
    ["runs", "--experiment", "tiny", "--tracking-uri", DOWN],
    ["predict", "--checkpoint", "runs:/0123/model", "--images", "DATA/JPEGImages", "--out", "OUT", "--tracking-uri", DOWN],
    ["export", "--checkpoint", "runs:/0123/model", "--format", "onnx", "--out", "OUT/m.onnx", "--tracking-uri", DOWN],
    ["eval", "--checkpoint", "runs:/0123/model", "--data", "DATA", "--tracking-uri", DOWN],
])  # fmt: skip
def test_every_command_that_opens_the_tracking_store_checks_the_server_first(data, tmp_path, tiny_config, space,
                                                                           capsys, command):
    config = tiny_run(tiny_config, data, tracking__uri=DOWN)
    names = {"SPACE": str(space), "CONFIG": str(config), "DATA": str(data), "OUT": str(tmp_path / "out")}
    argv = [next((a.replace(k, v) for k, v in names.items() if k in a), a) for a in command]
    err = cli_error(capsys, argv)
    assert f"{DOWN}: the MLflow tracking server does not answer" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()  # no run, no proposals, no output


def test_mlflow_http_retries_are_bounded_unless_the_user_set_them(monkeypatch, capsys):
    for name in HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    cli_error(capsys, ["runs", "--experiment", "x", "--tracking-uri", DOWN])
    expected = {**HTTP_LIMITS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "7"}
    assert {name: os.environ[name] for name in HTTP_LIMITS} == expected
    logger = pickle.dumps(RunLogger(DOWN, "run"))  # as it travels to a Ray worker on another node
    for name in HTTP_LIMITS:
        monkeypatch.delenv(name)
    pickle.loads(logger).client  # noqa: B018  (the worker's first MLflow call)
    assert {name: os.environ[name] for name in HTTP_LIMITS} == expected  # the driver's, the user's 7 included


# ---------------------------------------------------------------- outputs that cannot be written


@pytest.fixture
def blocker(workdir: Path) -> Path:
    """A plain file in the working directory, where commands are told to write folders."""
    path = workdir / "blocker"
    path.write_text("not a folder")
    return path


OUTPUT_CASES = {
    "predict --out under a file": (["predict", "--checkpoint", "CKPT", "--images", "DATA/JPEGImages", "--out", "blocker/maps"],
                                   "--out blocker/maps: lies under the file"),
    "predict --out is a file": (["predict", "--checkpoint", "CKPT", "--images", "DATA/JPEGImages", "--out", "blocker"],
                                "--out blocker: is a file, not a directory"),
    "export --out under a file": (["export", "--checkpoint", "CKPT", "--format", "torchscript", "--out", "blocker/m.pt"],
                                  "--out blocker/m.pt: lies under the file"),
    "export --out is a directory": (["export", "--checkpoint", "CKPT", "--format", "torchscript", "--out", "."],
                                    "--out .: is a directory; give a file name"),
    "eval --figure under a file": (["eval", "--checkpoint", "CKPT", "--data", "DATA", "--trimap", "1", "--figure", "blocker/t.png"],
                                   "--figure blocker/t.png: lies under the file"),
    "data synth --out under a file": (["data", "synth", "--out", "blocker/set", "--images", "4", "--size", "48"],
                                      "--out blocker/set: lies under the file"),
    "data synth's COCO copy on a file": (["data", "synth", "--out", "set", "--format", "coco", "--images", "4", "--size", "48"],
                                         "--format coco: its copy set-coco: is a file"),
    "demo --data under a file": (["demo", "--config", "ok.yaml", "--data", "blocker/demo"], "demo --data blocker/demo: lies under the file"),
    "train output.dir under a file": (["train", "--config", "ok.yaml", "--set", "output.dir=blocker/runs"],
                                      "output.dir WORK/blocker/runs: lies under the file"),
    "sweep output.dir under a file": (["sweep", "--space", "SPACE", "--config", "ok.yaml", "--set", "output.dir=blocker/runs"],
                                      "output.dir WORK/blocker/runs: lies under the file"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_an_output_that_cannot_be_written_is_one_line_before_the_work(workdir, data, blocker, space, capsys, case):
    (workdir / "set-coco").write_text("in the way")
    checkpoint = save_checkpoint(workdir / "checkpoint.pt", data)
    names = {"CKPT": str(checkpoint), "DATA": str(data), "SPACE": str(space)}
    argv, words = OUTPUT_CASES[case]
    argv = [next((a.replace(k, v) for k, v in names.items() if k in a), a) for a in argv]
    before, data_before = snapshot(workdir), snapshot(data)
    assert words.replace("WORK", str(workdir)) in cli_error(capsys, argv)
    assert snapshot(workdir) == before and snapshot(data) == data_before  # no output, no mlflow.db, no runs


# ---------------------------------------------------------------- model weights that do not fit


def test_model_weights_that_do_not_fit_are_refused_before_any_run_starts(data, tmp_path, tiny_config, capsys):
    state = build_model("small", 6).state_dict()
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, tmp_path / "odd.pt")
    config = tiny_run(tiny_config, data, model__weights=str(tmp_path / "odd.pt"))
    err = cli_error(capsys, ["train", "--config", str(config)])
    assert f"model.weights: {tmp_path / 'odd.pt'} does not fit this model: features.0.0.weight has shape" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()  # no proposals, no MLflow run


# ---------------------------------------------------------------- what --resume may change


def test_resume_takes_a_new_learning_rate_and_a_finished_run_is_left_alone(data, tmp_path, tiny_config, monkeypatch, capsys):
    cfg = load_config(tiny_run(tiny_config, data, train__epochs=3))  # lr 0.01, divided by 10 from epoch 2
    monkeypatch.setenv("BOXSUP_FAULT", "raise:1")
    with pytest.raises(RuntimeError, match="injected failure"):
        run_boxsup(cfg, progress=False)  # epochs 0 and 1 done, then FAILED with the tag boxsup.error
    monkeypatch.delenv("BOXSUP_FAULT")
    run_dir, client = tmp_path / "runs" / "r", MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow_runs(tmp_path)
    assert "boxsup.error" in run.data.tags
    stopped = snapshot(run_dir)
    for setting, words in [("seed=3", "--set seed=3: seed cannot change when a run is resumed"),
                           ("train.epochs=1", "--set train.epochs=1: the run has done 2 epochs already")]:
        assert words in cli_error(capsys, ["train", "--resume", str(run_dir), "--set", setting])
        assert snapshot(run_dir) == stopped

    assert main(["train", "--resume", str(run_dir), "--set", "train.lr=0.001"]) == 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and "boxsup.error" not in run.data.tags  # the stale error is gone
    assert run.data.tags["boxsup.resumed_with"] == "train.lr=0.001" and run.data.params["train.lr"] == "0.01"
    assert json.loads((run_dir / "run.json").read_text())["config"]["train"]["lr"] == 0.001
    lr = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    assert lr[2] == pytest.approx(0.0001)  # the new rate, on the schedule's second step

    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    finished = snapshot(run_dir)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("nothing to resume")
    err = cli_error(capsys, ["train", "--resume", str(run_dir), "--set", "train.lr=0.002"])
    assert "the run finished; train.lr=0.002 would change nothing" in err
    assert snapshot(run_dir) == finished
    assert len(client.search_logged_models(experiment_ids=[run.info.experiment_id])) == len(models) == 1
    assert client.get_run(run.info.run_id).data.tags == run.data.tags


@pytest.mark.parametrize("command", [["proposals", "--data", "DATA"], ["proposals", "import", "--format", "mcg", "--data", "DATA",
                                                                        "--mat-dir", "DATA"]], ids=["build", "import"])
def test_a_proposal_store_under_a_file_is_refused_before_any_work(command, tmp_path, capsys):
    generate_dataset(tmp_path / "data", n_images=4, size=48, seed=0)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "store"
    args = [str(tmp_path / "data") if a == "DATA" else a for a in command]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("boxsup: error:") == 1 and "--out" in err and "afile" in err and "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "x"
