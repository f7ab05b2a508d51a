"""MLflow tracking: the driver opens and closes a run; rank 0 of the training loop logs into it.

``tracking.uri`` when set, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``: a cluster
points every run at a tracking server with either. Artifacts of a new experiment go beside a
SQLite store (``<db dir>/mlartifacts``), never into ``./mlruns`` of whatever directory the command
ran in; a file store keeps them inside itself and a tracking server decides for itself.

A tracking server is asked once, with a short timeout, before a command writes anything
(``check_tracking_store``); MLflow's own HTTP retries are bounded (``HTTP_LIMITS``) unless the user
set them, in this process and in every process a ``RunLogger`` reaches (Ray workers included).
"""

from __future__ import annotations

import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from boxsup.config import flatten
from boxsup.errors import BoxSupError

DEFAULT_URI = "sqlite:///mlflow.db"
SERVER_CHECK_SECONDS = 5  # how long a tracking server has to answer before a command starts
# MLflow's defaults (7 retries, backoff factor 2, 120 s per request) spend over 4 minutes on a server
# that is down. These give up after about 30 s of back-off when it refuses connections (at most about
# 2 minutes when it does not answer at all): enough for a restart, not a silent hang.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri(configured: str | None) -> str:
    """``tracking.uri`` when set, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the working dir."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def bounded_http_retries(settings: dict[str, str] | None = None) -> dict[str, str]:
    """Set MLflow's HTTP retry variables that the user left unset (to ``settings``, else ``HTTP_LIMITS``);
    returns the values now in force, for processes that should use the same ones."""
    for name, value in (settings or HTTP_LIMITS).items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in HTTP_LIMITS}


def check_tracking_store(configured: str | None) -> str:
    """The tracking URI in force (``tracking_uri``), with MLflow's retries bounded; a tracking server
    that does not answer within ``SERVER_CHECK_SECONDS`` is one line naming it.

    Any HTTP answer (an error status, a TLS complaint) counts: MLflow's own settings decide the rest.
    """
    uri = tracking_uri(configured)
    bounded_http_retries()
    if uri.startswith(("http://", "https://")):
        problem = _server_problem(uri)
        if problem is not None:
            raise BoxSupError(f"{uri}: the MLflow tracking server does not answer ({problem}); start it, or fix "
                              "tracking.uri (--tracking-uri, MLFLOW_TRACKING_URI)")
    return uri


def _server_problem(uri: str) -> str | None:
    """Why the server at ``uri`` cannot be reached, or None when it answers at all."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_SECONDS).close()
        return None
    except urllib.error.HTTPError:
        return None  # an answer, if not a welcome one
    except urllib.error.URLError as exc:
        reason = exc.reason
    except OSError as exc:  # a timeout while reading the answer
        reason = exc
    if isinstance(reason, ssl.SSLError):
        return None
    if isinstance(reason, TimeoutError):
        return f"no answer within {SERVER_CHECK_SECONDS} s"
    return getattr(reason, "strerror", None) or str(reason)


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


ERROR_TAG = "boxsup.error"


def end_run(uri: str, run_id: str, ok: bool, error: str | None = None) -> None:
    """FINISHED, or FAILED with the error line as the tag ``boxsup.error``; a success (a resume) clears
    the tag an earlier failure or interruption left."""
    client = MlflowClient(tracking_uri(uri))
    if error:
        client.set_tag(run_id, ERROR_TAG, error[:5000])
    elif ok and ERROR_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, ERROR_TAG)
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


class RunLogger:
    """Logs metrics and artifacts into one existing run, from any process (picklable)."""

    def __init__(self, uri: str, run_id: str):
        self.uri = tracking_uri(uri)
        self.run_id = run_id
        self.http_settings = bounded_http_retries()  # travel with the logger to workers on other nodes

    @property
    def client(self) -> MlflowClient:
        bounded_http_retries(self.http_settings)
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
