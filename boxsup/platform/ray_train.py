"""Running the training loop through Ray Train, with the label update on a Ray actor pool."""

from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from boxsup.assign.assigner import AssignmentSpec
from boxsup.data.annotations import Supervision
from boxsup.errors import BoxSupError
from boxsup.platform.assign_pool import AssignmentPool, LocalAssignmentPool
from boxsup.platform.context import RayTrainContext
from boxsup.platform.guard import driver_guard
from boxsup.trainers.job import TrainingJob
from boxsup.trainers.loop import USER_ERROR_FILE, train_worker
from boxsup.utils.storage import open_location

log = logging.getLogger(__name__)


def run_cpus(cfg: dict[str, Any]) -> float:
    """Logical CPUs one run asks Ray for: its Train workers and its assignment actors."""
    return cfg["ray"]["num_workers"] * cfg["ray"]["cpus_per_worker"] + cfg["assign"]["num_actors"] * cfg["assign"]["actor_cpus"]


def init_ray(cfg: dict[str, Any], min_cpus: float = 0.0) -> None:
    """Join ``ray.address`` ("auto": the running cluster), or start a local Ray big enough for the work.

    A local Ray gets at least as many logical CPUs as one run's Train workers and actors ask for
    (or ``min_cpus``, e.g. a sweep's concurrent trials), so a 2-core laptop can run 2 workers and
    2 actors: they take turns (label update, then epoch).
    """
    start_ray(cfg["ray"]["address"], max(run_cpus(cfg), min_cpus))


def start_ray(address: str | None, min_cpus: float = 0.0) -> None:
    """Join the cluster at ``address`` (else ``RAY_ADDRESS``), or start a local Ray with every core
    (at least ``min_cpus`` logical CPUs)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    driver_guard()  # a killed driver must not leave this Ray's processes running
    # One machine is never preempted: no watcher actor per run (one process less to start on 2 cores).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # Ray Train's controller polls its workers every 2 s by default, and a run's start and end wait on
    # those polls: every 0.5 s, a local run starts and ends sooner (docs/benchmarks.md).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(num_cpus=max(os.cpu_count() or 1, int(min_cpus + 0.999)))


def ray_train_worker(loop_config: dict[str, TrainingJob]) -> None:
    """Ray Train's ``train_loop_per_worker``: the job, run in this worker's Ray Train context."""
    quiet_ray_train_reports()
    train_worker(replace(loop_config["job"], context=RayTrainContext()))


def quiet_ray_train_reports() -> None:
    """Inside Ray: our own INFO lines to the driver, not Ray Train's lines per report and checkpoint."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import ray.train.v2._internal.execution.context as train_context
    import ray.train.v2._internal.execution.storage as train_storage

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    logging.getLogger(train_storage.__name__).setLevel(logging.WARNING)  # "Checkpoint successfully created"


def needs_actor_pool(cfg: dict[str, Any], spec: AssignmentSpec, annotations: list) -> bool:
    """Whether a run's label updates need the actor pool: box images and more rounds than round 0.

    A run with fixed labels (``assign.update: false``) labels its box images once, from E_o
    alone; each worker then labels its share in-process, and no actor has to start. The labels are
    the same either way (each image's draw is keyed on seed, round and image id). The recovery
    tests' ``kill-actor`` fault keeps the actors: it needs one to kill.
    """
    boxes = any(a.supervision == Supervision.BOX for a in annotations)
    return boxes and (cfg["assign"]["update"] or spec.fault is not None)


def fit_with_ray(
    job: TrainingJob, spec: AssignmentSpec, run_name: str, run_dir: str | Path, report_to_tune: bool = False,
) -> None:
    """One ``TorchTrainer.fit``; resumes from the run's last Ray Train checkpoint when there is one.

    ``report_to_tune``: this runs inside a Ray Tune trial, and rank 0's reports go on to Tune.
    """
    cfg = job.config
    init_ray(cfg)
    pool: AssignmentPool | LocalAssignmentPool
    if needs_actor_pool(cfg, spec, job.annotations):
        pool = AssignmentPool(spec, cfg["assign"]["num_actors"], f"boxsup-{run_name}-{uuid.uuid4().hex[:6]}",
                              cfg["assign"]["actor_cpus"])
    else:  # one round of fixed labels: each worker labels its share in-process, no actors to start
        pool = LocalAssignmentPool(spec)
    r = cfg["ray"]
    storage_path, storage_filesystem = open_location(run_dir).ray_storage("ray")  # checkpoints beside the run's files
    trainer = TorchTrainer(
        ray_train_worker,
        train_loop_config={"job": replace(job, pool=pool, progress=False)},  # per-batch bars: log spam through Ray
        scaling_config=ScalingConfig(num_workers=r["num_workers"], use_gpu=r["use_gpu"],
                                     resources_per_worker={"CPU": r["cpus_per_worker"]}),
        run_config=RunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                             failure_config=FailureConfig(max_failures=r["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),  # the last and the one being written
                             # Tune's report callback is a Train callback at run time; Ray's annotations disagree
                             callbacks=[TuneReportCallback()] if report_to_tune else None),  # type: ignore[list-item]
    )
    run_files = open_location(run_dir)
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise_user_error(run_files)
        user_error = re.search(r"BoxSupError: (.+)", str(exc))
        if user_error:  # a user's mistake found on a worker (a corrupt image, say): say just that
            raise BoxSupError(user_error.group(1).strip()) from None
        raise BoxSupError(f"training failed ({str(exc).splitlines()[0]}); continue with `boxsup train --resume {run_dir}`") from None
    finally:
        pool.kill()
    raise_user_error(run_files)  # the workers stopped at once on a recorded mistake


def raise_user_error(run_files) -> None:
    """The user's mistake a worker recorded in the run directory, as the one-line error it is."""
    try:
        message = run_files.read_bytes(USER_ERROR_FILE).decode()
    except FileNotFoundError:
        return
    raise BoxSupError(message) from None
