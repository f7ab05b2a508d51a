"""Recovery through Ray is exact: a killed Train worker, a killed assignment actor, a restart after the
last checkpoint and a killed driver (then ``--resume``) all end with the model and metrics of a run
that was never interrupted, one MLflow value per metric and step, every label map readable, no
process left behind. Faults are injected with ``BOXSUP_FAULT`` (see ``boxsup.utils.faults``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from boxsup.cli import main
from boxsup.data.synth import generate_dataset
from conftest import write_tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # every test runs on the session's Ray, a minute or more

METRICS = ("train_loss", "val_miou", "pseudo_miou")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery") / "data"
    generate_dataset(root, n_images=16, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def baseline(ray_session, data_root, tmp_path_factory):
    """The uninterrupted run every recovered run must match."""
    tmp = tmp_path_factory.mktemp("baseline")
    config = write_config(tmp, data_root)
    assert main(["train", "--config", str(config)]) == 0
    return outcome(tmp)


def write_config(tmp: Path, data_root: Path) -> Path:
    """The tiny config with a shared proposal store, 4 restarts allowed, its own seed and experiment."""
    return write_tiny_config(tmp, data_root, seed=4, ray__max_failures=3, tracking__experiment="recovery",
                             proposals__store=str(data_root.parent / "store"))


def outcome(tmp: Path) -> dict:
    """The run's status, metric histories (step -> values), final weights, and label maps by round."""
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
    history = {}
    for key in METRICS:
        steps: dict[int, list[float]] = {}
        for m in client.get_metric_history(run.info.run_id, key):
            steps.setdefault(m.step, []).append(m.value)
        history[key] = steps
    run_dir = tmp / "runs" / "r"
    weights = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    labels = {}
    for png in sorted((run_dir / "labels").rglob("*.png")):
        with Image.open(png) as im:  # every label map decodes: none half-written
            labels[str(png.relative_to(run_dir))] = np.asarray(im).copy()
    return {"status": run.info.status, "history": history, "weights": weights, "labels": labels,
            "tags": run.data.tags, "run_dir": run_dir}


def assert_same_as(recovered: dict, baseline: dict) -> None:
    assert recovered["status"] == "FINISHED"
    for key in METRICS:  # one value per metric and step, and the very values of the baseline
        assert all(len(values) == 1 for values in recovered["history"][key].values()), (key, recovered["history"][key])
        assert recovered["history"][key] == baseline["history"][key], key
    assert recovered["weights"].keys() == baseline["weights"].keys()
    for name, tensor in baseline["weights"].items():
        assert torch.equal(recovered["weights"][name], tensor), name
    assert recovered["labels"].keys() == baseline["labels"].keys()
    for name, label_map in baseline["labels"].items():
        np.testing.assert_array_equal(recovered["labels"][name], label_map, err_msg=name)


def test_killed_worker_and_actor_and_a_late_restart_end_as_an_uninterrupted_run(
    baseline, data_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("BOXSUP_FAULT", "kill-actor:1,kill-worker:1,raise:2")
    assert main(["train", "--config", str(write_config(tmp_path, data_root))]) == 0
    recovered = outcome(tmp_path)
    for marker in (".fault-kill-actor-1", ".fault-kill-worker-1", ".fault-raise-2"):  # every fault did happen
        assert (recovered["run_dir"] / marker).exists(), marker
    assert_same_as(recovered, baseline)


def test_killed_driver_leaves_no_process_and_resume_ends_as_an_uninterrupted_run(baseline, data_root, tmp_path):
    config = write_config(tmp_path, data_root)
    env = os.environ | {"BOXSUP_FAULT": "kill-driver:1"}
    driver = subprocess.Popen([sys.executable, "-m", "boxsup.cli", "train", "--config", str(config)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started: dict[int, psutil.Process] = {}
    parent = psutil.Process(driver.pid)
    while driver.poll() is None:  # everything the driver starts (its Ray, Train workers, actors, its guard)
        try:
            for child in parent.children(recursive=True):
                started.setdefault(child.pid, child)
        except psutil.Error:
            pass
        time.sleep(0.2)
    assert driver.returncode == -9, driver.stderr.read()[-3000:]
    assert len(started) > 5
    deadline = time.monotonic() + 60
    while [p for p in started.values() if alive(p)]:
        assert time.monotonic() < deadline, [p.name() for p in started.values() if alive(p)]
        time.sleep(0.5)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
    assert run.info.status == "KILLED" and "--resume" in run.data.tags["boxsup.error"]
    run_dir = tmp_path / "runs" / "r"
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert_same_as(outcome(tmp_path), baseline)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_users_mistake_on_a_worker_ends_the_run_at_once(ray_session, tmp_path, monkeypatch, capsys):
    """A validation image whose header reads but whose data is cut off: found only when a worker decodes it.
    The run ends with that one line (not "continue with --resume" after max_failures retries), FAILED
    in MLflow with the line as its tag, and its directory is gone (nothing was trained), so the name is free."""
    root = tmp_path / "data"
    generate_dataset(root, n_images=12, size=64, seed=9)
    val_id = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    jpeg = root / "JPEGImages" / f"{val_id}.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) * 2 // 3])  # the header survives, the pixels do not
    config = write_config(tmp_path, root)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("boxsup: error:") and f"{val_id}.jpg" in err[-1] and "--resume" not in err[-1], err[-1]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
    assert run.info.status == "FAILED" and f"{val_id}.jpg" in run.data.tags["boxsup.error"]
    assert not (tmp_path / "runs" / "r").exists()
