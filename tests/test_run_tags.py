"""MLflow runs created through the client carry MLflow's standard context tags, and ending one prints no links."""

from __future__ import annotations

import shutil
import subprocess
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
