"""MLflow runs created through the client carry MLflow's standard context tags, and ending one prints no links."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from boxsup.config import load_config
from boxsup.platform.search_space import load_search_space
from boxsup.platform.sweep import start_parent_run
from boxsup.platform.tracking import QUIET, end_run, start_run

CONTEXT = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit")
REPO = Path(__file__).resolve().parents[1]


def head_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout these tests (and boxsup) run from; None outside one."""
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def test_a_run_carries_mlflows_context_tags(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    run_id = start_run(uri, "tags", "r", {"seed": 0}, {"boxsup.extra": "kept"})
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert set(CONTEXT[:3]) <= set(tags) and tags["mlflow.source.type"] == "LOCAL"
    assert tags["boxsup.extra"] == "kept" and tags["mlflow.runName"] == "r"
    commit = head_commit()
    if commit is None:
        pytest.skip("not run from a git checkout: no commit to compare with")
    assert tags["mlflow.source.git.commit"] == commit


def test_a_sweep_and_its_trials_carry_the_sweeps_context_tags(tmp_path):
    """The parent run is made on the driver; a trial's run in a Ray actor (whose script is Ray's worker)
    takes the parent's source tags rather than its own."""
    uri = f"sqlite:///{tmp_path}/m.db"
    (tmp_path / "space.yaml").write_text("params:\n  assign.k: {grid: [1, 2]}\n")
    cfg = load_config(None, ["data.root=data", f"tracking.uri={uri}"])
    parent = start_parent_run(cfg, "sw", tmp_path / "space.yaml", load_search_space(tmp_path / "space.yaml"))
    client = MlflowClient(uri)
    parent_tags = client.get_run(parent).data.tags
    assert set(CONTEXT[:3]) <= set(parent_tags) and parent_tags["boxsup.role"] == "sweep"
    if head_commit() is not None:
        assert parent_tags["mlflow.source.git.commit"] == head_commit()

    client.set_tag(parent, "mlflow.source.name", "/somewhere/boxsup")  # as if the sweep ran from elsewhere
    trial = start_run(uri, "sw", "t1", cfg, {"mlflow.parentRunId": parent})
    trial_tags = client.get_run(trial).data.tags
    assert trial_tags["mlflow.source.name"] == "/somewhere/boxsup" and trial_tags["mlflow.parentRunId"] == parent
    assert all(trial_tags.get(key) == parent_tags.get(key) for key in CONTEXT if key != "mlflow.source.name")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` with its own SQLite store: MLflow prints run links only for runs on a server."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            server.wait(timeout=30)
            pytest.fail("mlflow server did not come up")
        time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_ending_a_run_prints_no_mlflow_links(mlflow_server, monkeypatch, capsys):
    for name in QUIET:
        monkeypatch.delenv(name, raising=False)
    client = MlflowClient(mlflow_server)
    loud = start_run(mlflow_server, "quiet", "loud", {"seed": 0})
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)  # start_run's logger set it
    client.set_terminated(loud, "FINISHED")  # MLflow's own behaviour: the links
    assert "View run loud at" in capsys.readouterr().out

    run_id = start_run(mlflow_server, "quiet", "r", {"seed": 0})
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    end_run(mlflow_server, run_id, ok=True)
    assert "View run" not in capsys.readouterr().out and client.get_run(run_id).info.status == "FINISHED"

    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # the user's choice stands
    run_id = start_run(mlflow_server, "quiet", "shown", {"seed": 0})
    end_run(mlflow_server, run_id, ok=True)
    assert "View run shown at" in capsys.readouterr().out
