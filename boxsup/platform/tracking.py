"""MLflow tracking of one run: the resolved config as params, metrics per epoch/round, artifacts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow

from boxsup.config import flatten


class Tracker:
    """A context manager around one MLflow run; the run ends FAILED if the block raises.

    ``tracking.uri`` defaults to a local SQLite file; ``MLFLOW_TRACKING_URI`` in the environment
    overrides it, so a cluster can point every run at a tracking server.
    """

    def __init__(self, uri: str, experiment: str, run_name: str | None = None):
        self.uri = os.environ.get("MLFLOW_TRACKING_URI", uri)
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None

    def __enter__(self) -> "Tracker":
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        self.run_id = mlflow.start_run(run_name=self.run_name).info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        mlflow.end_run(status="FINISHED" if exc_type is None else "FAILED")

    def log_config(self, cfg: dict[str, Any]) -> None:
        mlflow.log_params({k: str(v) for k, v in flatten(cfg).items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)
