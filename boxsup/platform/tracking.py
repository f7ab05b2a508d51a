"""MLflow tracking: the driver opens and closes a run; rank 0 of the training loop logs into it.

``tracking.uri`` when set, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``: a cluster
points every run at a tracking server with either. Artifacts of a new experiment go beside a
SQLite store (``<db dir>/mlartifacts``), never into ``./mlruns`` of whatever directory the command
ran in; a file store keeps them inside itself and a tracking server decides for itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from boxsup.config import flatten


DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(configured: str | None) -> str:
    """``tracking.uri`` when set, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the working dir."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database; None lets MLflow decide."""
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        return (database.parent.resolve() / "mlartifacts").as_uri()
    return None


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment called ``name``, created when missing (artifacts: ``artifact_root``)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri))


def start_run(uri: str, experiment: str, run_name: str, cfg: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """Create the run (and its experiment if new), log the whole config as params; returns the run id.

    ``tags`` may hold ``mlflow.parentRunId``: the run is then shown nested under that (sweep) run.
    """
    client = MlflowClient(tracking_uri(uri))
    run_id = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags or {}).info.run_id
    RunLogger(uri, run_id).log_params({k: str(v) for k, v in flatten(cfg).items()})
    return run_id


def reopen_run(uri: str, run_id: str) -> None:
    MlflowClient(tracking_uri(uri)).update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))


def end_run(uri: str, run_id: str, ok: bool, error: str | None = None) -> None:
    """FINISHED, or FAILED with the error line as the tag ``boxsup.error``."""
    client = MlflowClient(tracking_uri(uri))
    if error:
        client.set_tag(run_id, "boxsup.error", error[:5000])
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


class RunLogger:
    """Logs metrics and artifacts into one existing run, from any process (picklable)."""

    def __init__(self, uri: str, run_id: str):
        self.uri = tracking_uri(uri)
        self.run_id = run_id

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which ``key`` already has a value (an earlier attempt of this run logged them)."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
