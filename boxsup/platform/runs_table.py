"""``boxsup runs``: an experiment's runs read back from MLflow, as a table sorted by ``val_miou``
(or, for scripts, the same rows as JSON or CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from boxsup.errors import BoxSupError
from boxsup.platform.tracking import check_tracking_store
from boxsup.serving import MODEL_NAME

SWEEP_ROLE_TAG = "boxsup.role"  # "sweep" on a sweep's parent run
SWEPT_KEYS_TAG = "boxsup.swept_keys"  # JSON list of the space's config keys, on the parent run
KEY_PARAMS = ("data.supervision", "proposals.method", "assign.lam", "assign.k")  # when no sweep names its keys
FINAL_METRICS = ("val_miou", "pseudo_miou", "train_loss")


@dataclass
class RunRow:
    """One training run as MLflow holds it: its params, final metrics and how long it took."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    seconds: float

    @property
    def val_miou(self) -> float | None:
        return self.metrics.get("val_miou")


def _client_for(uri: str | None) -> tuple[str, MlflowClient]:
    uri = check_tracking_store(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise BoxSupError(f"{uri}: no MLflow store there; give --tracking-uri (or MLFLOW_TRACKING_URI) of the runs")
    return uri, MlflowClient(uri)


def _search(uri: str | None, experiment: str) -> list[Run]:
    """Every run of the experiment, a sweep's parent run included."""
    uri, client = _client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise BoxSupError(f"{uri}: no MLflow experiment {experiment!r} (there: {', '.join(names) or 'none'})")
    return client.search_runs([found.experiment_id], max_results=10000)


def _is_sweep(run: Run) -> bool:
    return run.data.tags.get(SWEEP_ROLE_TAG) == "sweep"


def _training_rows(runs: list[Run]) -> list[RunRow]:
    """The training runs (not a sweep's parent run), best ``val_miou`` first."""
    rows = []
    for run in runs:
        if _is_sweep(run):
            continue
        end = run.info.end_time or int(time.time() * 1000)
        rows.append(RunRow(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.params),
                           dict(run.data.metrics), (end - run.info.start_time) / 1000))
    return sorted(rows, key=lambda r: (r.val_miou is None, -(r.val_miou or 0.0), r.name))


def experiment_runs(uri: str | None, experiment: str) -> list[RunRow]:
    """The experiment's training runs (not a sweep's parent run), best ``val_miou`` first."""
    return _training_rows(_search(uri, experiment))


def varying_keys(rows: list[RunRow]) -> list[str]:
    """Of the usual key params, those whose value differs between runs (all of them if none does)."""
    differing = [k for k in KEY_PARAMS if len({r.params.get(k) for r in rows}) > 1]
    return differing or list(KEY_PARAMS)


def format_runs_table(rows: list[RunRow], keys: list[str]) -> str:
    """A plain-text table: run, status, the key params, final metrics, duration."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = ["run", "status", *keys, *FINAL_METRICS, "duration"]
    body = [[r.name, r.status, *(r.params.get(k, "-") for k in keys),
             *(number(r.metrics.get(m)) for m in FINAL_METRICS), _duration(r.seconds)] for r in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _table_keys(runs: list[Run], rows: list[RunRow]) -> list[str]:
    """The param columns: a sweep's swept keys, else the usual key params that differ between runs."""
    sweeps = [run for run in runs if _is_sweep(run)]
    return json.loads(sweeps[0].data.tags[SWEPT_KEYS_TAG]) if sweeps else varying_keys(rows)


def runs_report(uri: str | None, experiment: str) -> str:
    """What ``boxsup runs --experiment NAME`` prints."""
    runs = _search(uri, experiment)
    rows = _training_rows(runs)
    if not rows:
        return f"experiment {experiment!r} has no training runs yet"
    return f"{format_runs_table(rows, _table_keys(runs, rows))}\n{best_model_line(uri, runs, rows[0])}"


RECORD_FIELDS = ("run", "run_id", "status")  # then the key params, FINAL_METRICS and DURATION_FIELD
DURATION_FIELD = "duration_s"


def run_records(rows: list[RunRow], keys: list[str]) -> list[dict[str, Any]]:
    """The table's rows as plain values, in its order: run name, run id, status, the key params (None where a
    run lacks one), the final metrics as numbers (None where missing or not finite), the duration in seconds."""
    def number(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None

    return [{"run": r.name, "run_id": r.run_id, "status": r.status, **{k: r.params.get(k) for k in keys},
             **{m: number(r.metrics.get(m)) for m in FINAL_METRICS}, DURATION_FIELD: round(r.seconds, 3)}
            for r in rows]


def runs_export(uri: str | None, experiment: str, fmt: str) -> str:
    """What ``boxsup runs --json`` (``fmt`` "json": a list of objects) or ``--csv`` (a header, then one line a
    run; a missing value is an empty field) prints: the table's rows, best ``val_miou`` first."""
    runs = _search(uri, experiment)
    rows = _training_rows(runs)
    keys = _table_keys(runs, rows)
    records = run_records(rows, keys)
    if fmt == "json":
        return json.dumps(records, indent=2)
    out = io.StringIO()
    writer = csv.DictWriter(out, [*RECORD_FIELDS, *keys, *FINAL_METRICS, DURATION_FIELD], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().rstrip("\n")


def best_model_line(uri: str | None, runs: list[Run], best: RunRow) -> str:
    """Where the best run's network is: its MLflow model URI, or that it has none (a run from before models were logged)."""
    _, client = _client_for(uri)
    experiment = next(run.info.experiment_id for run in runs if run.info.run_id == best.run_id)
    wanted = f"name = '{MODEL_NAME}' AND source_run_id = '{best.run_id}'"
    if client.search_logged_models(experiment_ids=[experiment], filter_string=wanted, max_results=1):
        return (f"best run {best.name}: model runs:/{best.run_id}/{MODEL_NAME} "
                f"(boxsup predict --checkpoint runs:/{best.run_id}/{MODEL_NAME} --images DIR --out DIR)")
    return f"best run {best.name} ({best.run_id}) logged no MLflow model; use its run directory's checkpoint.pt"
