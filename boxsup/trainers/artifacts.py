"""A run directory's files that are also MLflow artifacts: made locally, then put in both places."""

from __future__ import annotations

from pathlib import Path

from boxsup.trainers.job import MetricsSink
from boxsup.utils.storage import Location


def publish(local: Path, run_dir: Location, logger: MetricsSink | None, folder: str | None = None) -> None:
    """Copy the local file ``local`` into ``run_dir`` under its own name, and log it to MLflow in ``folder``."""
    run_dir.upload(local, local.name)
    if logger is not None:
        logger.log_artifact(local, folder)
