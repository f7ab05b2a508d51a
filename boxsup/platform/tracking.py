"""MLflow tracking: the driver opens and closes a run; rank 0 of the training loop logs into it.

``tracking.uri`` when set, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``: a cluster
points every run at a tracking server with either. Artifacts of a new experiment go beside a
SQLite store (``<db dir>/mlartifacts``), never into ``./mlruns`` of whatever directory the command
ran in; a file store keeps them inside itself and a tracking server decides for itself.

A tracking server is asked once, with a short timeout, before a command writes anything
(``check_tracking_store``); MLflow's own HTTP retries are bounded (``HTTP_LIMITS``) unless the user
set them, in this process and in every process a ``RunLogger`` reaches (Ray workers included).

Runs are created through the client (``create_run``), with MLflow's standard context tags
(``mlflow.user``, ``mlflow.source.*``) that ``mlflow.start_run`` would add; MLflow's "View run ... at"
lines, printed when a run on a tracking server ends, are left out (``quiet_mlflow``).
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
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_USER,
)

from boxsup.config import flatten
from boxsup.errors import BoxSupError

DEFAULT_URI = "sqlite:///mlflow.db"
SERVER_CHECK_SECONDS = 5  # how long a tracking server has to answer before a command starts
# MLflow's defaults (7 retries, backoff factor 2, 120 s per request) spend over 4 minutes on a server
# that is down. These give up after about 30 s of back-off when it refuses connections (at most about
# 2 minutes when it does not answer at all): enough for a restart, not a silent hang.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# MLflow prints "View run <name> at: <url>" and "View experiment at: <url>" to stdout whenever a run on
# a tracking server ends (TrackingServiceClient._log_url, from set_terminated): twice per training
# (the model's logging block, then end_run). boxsup prints the run's id and model URI itself.
QUIET = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def tracking_uri(configured: str | None) -> str:
    """``tracking.uri`` when set, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the working dir."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def quiet_mlflow() -> None:
    """Leave out MLflow's run and experiment links on stdout (``QUIET``), unless the user set the variable
    (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=false`` brings them back). Warnings and logs are untouched."""
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)


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
    quiet_mlflow()
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


def context_tags(client: MlflowClient, parent_run_id: str | None = None) -> dict[str, str]:
    """MLflow's standard tags for a run this process starts: ``mlflow.user``, ``mlflow.source.name``,
    ``mlflow.source.type``, ``mlflow.source.git.commit`` (and the branch and repo URL), as
    ``mlflow.start_run`` would set them (``resolve_tags``: every registered run context provider).

    MLflow finds the git commit from the script that started the process (``sys.argv[0]``); when that
    is not in a git checkout (``python -c``, a console script in a venv elsewhere), the commit of the
    boxsup checkout is used where boxsup runs from one. A run nested under ``parent_run_id`` (a sweep's
    trial, started in a Ray actor whose script is Ray's worker) takes the parent run's context tags.
    """
    if parent_run_id:
        inherited = {key: value for key, value in client.get_run(parent_run_id).data.tags.items()
                     if key == MLFLOW_USER or key.startswith("mlflow.source.")}
        if inherited:
            return inherited
    tags = {key: str(value) for key, value in resolve_tags().items()}
    if MLFLOW_GIT_COMMIT not in tags:
        checkout = str(Path(__file__).resolve().parents[1])  # the boxsup package's directory
        found = {MLFLOW_GIT_COMMIT: get_git_commit(checkout), MLFLOW_GIT_BRANCH: get_git_branch(checkout),
                 MLFLOW_GIT_REPO_URL: get_git_repo_url(checkout)}
        if found[MLFLOW_GIT_COMMIT]:
            tags.update({key: value for key, value in found.items() if value})
    return tags


def create_run(client: MlflowClient, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
    """A new run in the experiment with id ``experiment``, tagged with ``context_tags`` and then ``tags``
    (which win); returns its id. ``tags`` may hold ``mlflow.parentRunId``: the run is then shown nested
    under that (sweep) run and shares its context tags."""
    tags = tags or {}
    all_tags = context_tags(client, tags.get(MLFLOW_PARENT_RUN_ID)) | tags
    return client.create_run(experiment, run_name=run_name, tags=all_tags).info.run_id


def start_run(uri: str, experiment: str, run_name: str, cfg: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """Create the run (and its experiment if new, see ``create_run`` for its tags), log the whole config
    as params; returns the run id."""
    client = MlflowClient(tracking_uri(uri))
    run_id = create_run(client, experiment_id(client, experiment), run_name, tags)
    RunLogger(uri, run_id).log_params({k: str(v) for k, v in flatten(cfg).items()})
    return run_id


def reopen_run(uri: str, run_id: str) -> None:
    MlflowClient(tracking_uri(uri)).update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))


ERROR_TAG = "boxsup.error"


def end_run(uri: str, run_id: str, ok: bool, error: str | None = None) -> None:
    """FINISHED, or FAILED with the error line as the tag ``boxsup.error``; a success (a resume) clears
    the tag an earlier failure or interruption left."""
    quiet_mlflow()
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
        quiet_mlflow()
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
