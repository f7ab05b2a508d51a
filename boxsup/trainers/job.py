"""What one worker's training loop is handed: a typed job, and the small interfaces it talks to.

``boxsup.platform`` builds the job (datasets are rebuilt on each worker from ``config``), picks the
worker context (one process or a Ray Train worker), the label-update pool (in-process or actors)
and the metrics sink (an MLflow run); the loop in ``boxsup.trainers.loop`` sees only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from boxsup.data.annotations import ImageAnnotation
from boxsup.trainers.settings import RunSettings
from boxsup.utils.faults import Fault


class MetricsSink(Protocol):
    """Where rank 0 logs metrics and artifacts (an MLflow run); picklable."""

    def logged_steps(self, key: str) -> set[int]: ...

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None: ...

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None: ...


class WorkerContext(Protocol):
    """Where a loop runs: its rank among ``world`` workers, its device, collectives and checkpoints."""

    rank: int
    world: int
    device: torch.device

    def all_reduce(self, array: np.ndarray) -> np.ndarray: ...

    def all_gather(self, obj: Any) -> list[Any]: ...

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def broadcast_buffers(self, model: torch.nn.Module) -> None: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


class LabelPool(Protocol):
    """The label update's assignment pool: images submitted with their per-atom costs, results collected."""

    def submit(self, round_index: int, image_id: str, atom_means: np.ndarray | None,
               previous_round: int | None = None) -> None: ...

    def collect(self) -> list[Any]: ...

    def cache_mb(self) -> float: ...


@dataclass
class TrainingJob:
    """One run's work for a worker: the config (and its typed ``settings``, made from it once), the
    training annotations, where labels, proposals and files go, and the pool, sink and context to use
    (``context`` None: the launcher sets one per worker)."""

    config: dict[str, Any]  # the validated run config: its data and model sections build the datasets and network
    annotations: list[ImageAnnotation]
    run_dir: str
    label_store: str
    proposal_store: str
    logger: MetricsSink
    pool: LabelPool | None = None
    context: WorkerContext | None = None
    progress: bool = True
    fault: Fault | None = None  # the recovery tests' injected faults (BOXSUP_FAULT)
    driver_pid: int | None = None  # the launching process, for the kill-driver fault
    settings: RunSettings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = RunSettings.from_config(self.config)
