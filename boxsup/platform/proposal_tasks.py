"""Filling a proposal store with Ray tasks over every CPU of the cluster.

The driver lists what the store already holds, cuts the rest into chunks of image ids (several
chunks per CPU) and keeps one task per CPU running. Each task rebuilds the training set from the
config's plain ``data`` section (no dataset is pickled), makes the pools of its ids and saves them
into the store itself; only a small ``ChunkReport`` comes back. Every pool depends on the image,
its boxes, the method, the cap and the seed alone, so the files are byte for byte those of the
in-process ``build_store``, whatever the number of tasks or the chunk size.

Failures: an image whose reading or proposal method raises is tried again (``image_retries``),
then counted with its reason; a task whose worker died is retried by Ray (``max_retries``), then
its images are retried one task each, so only the image that kills a worker is counted out.
A ``BoxSupError`` outside an image (the store cannot be written, the rebuilt dataset differs)
stops the build.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import ray

from boxsup.data.dataset import SegmentationDataset
from boxsup.data.sources import build_training_set
from boxsup.errors import BoxSupError
from boxsup.proposals.generate import (
    MAX_CANDIDATES,
    MAX_SIDE,
    NO_CANDIDATE,
    UNREADABLE,
    BuildReport,
    generator,
    prepare_store,
)
from boxsup.proposals.store import ProposalStore
from boxsup.utils.progress import progress_bar
from boxsup.utils.storage import canonical

log = logging.getLogger(__name__)

CHUNKS_PER_TASK = 4  # chunks per concurrent task: CPUs that finish early take more
MAX_CHUNK = 64  # images per chunk at most: a lost worker redoes little, the bar moves often
TASK_RETRIES = 2  # Ray's retries of a task whose worker died


@dataclass
class ChunkReport:
    """What one task did: small enough to send back for every chunk."""

    made: int = 0
    retried: int = 0  # image attempts that failed and were tried again
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> "image id: message" of one image
    failures: list[str] = field(default_factory=list)  # "image path or id: message" of every image counted
    seconds: float = 0.0  # the task's wall time, on the one CPU it holds
    cpu_seconds: float = 0.0  # the CPU time its process used meanwhile (less than ``seconds`` on a busy machine)

    def count(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example)
        self.failures.append(example)


@dataclass
class ClusterBuildReport(BuildReport):
    """``BuildReport`` plus where it failed and how fast it went."""

    examples: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    retried: int = 0
    tasks: int = 0  # concurrent tasks
    chunks: int = 0
    core_seconds: float = 0.0  # summed wall time of the tasks, each holding one CPU
    cpu_seconds: float = 0.0  # summed CPU time of the tasks
    wall_seconds: float = 0.0

    def add(self, part: ChunkReport) -> None:
        self.made += part.made
        self.retried += part.retried
        self.skipped.update(part.skipped)
        for reason, example in part.examples.items():
            self.examples.setdefault(reason, example)
        self.failures += part.failures
        self.core_seconds += part.seconds
        self.cpu_seconds += part.cpu_seconds

    @property
    def processed(self) -> int:
        """Images a task worked on: made, or failed for good."""
        return self.made + sum(n for why, n in self.skipped.items() if why != NO_CANDIDATE)

    def throughput_line(self) -> str:
        def rate(seconds: float) -> float:
            return self.processed / seconds if seconds else 0.0

        return (f"{self.processed} images in {self.wall_seconds:.1f} s on {self.tasks} tasks ({self.chunks} chunks): "
                f"{rate(self.wall_seconds):.2f} images/s, {rate(self.core_seconds):.2f} images/s per core "
                f"({self.core_seconds:.1f} core-seconds; {rate(self.cpu_seconds):.2f} images per CPU-second)")


_worker_dataset: tuple[str, SegmentationDataset] | None = None  # the last dataset a worker process rebuilt


def _dataset(data: dict[str, Any], classes: tuple[str, ...]) -> SegmentationDataset:
    """The training set of ``data``, rebuilt once per worker process (reused by its later chunks)."""
    global _worker_dataset
    key = json.dumps([data, list(classes)], sort_keys=True, default=str)
    if _worker_dataset is None or _worker_dataset[0] != key:
        dataset = build_training_set({"data": data}, tuple(classes))
        dataset.silence_skips()  # the driver counted and logged them
        _worker_dataset = (key, dataset)
    return _worker_dataset[1]


def build_chunk(data: dict[str, Any], classes: tuple[str, ...], origin: dict[str, Any], store_root: str,
                method: str, max_candidates: int, seed: int, ids: list[str], image_retries: int,
                max_side: int = MAX_SIDE) -> ChunkReport:
    """Make and save the pools of ``ids`` (the body of one task; runs in a Ray worker)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    dataset = _dataset(data, classes)
    if dataset.origin() != origin:
        raise BoxSupError(f"a Ray worker read the training set as {dataset.origin()}, the driver as {origin}; "
                          "give absolute data paths that every node can read")
    store, make, report = ProposalStore(store_root), generator(method, max_candidates, seed, max_side), ChunkReport()
    for image_id in ids:
        for attempt in range(image_retries + 1):
            try:
                pool = make(dataset.image(image_id), dataset.annotation(image_id).boxes_array())
                break
            except BoxSupError as exc:
                reason, text = UNREADABLE, str(exc)
            except Exception as exc:  # a failing method costs one image, not the build
                reason, text = f"proposal method failed ({type(exc).__name__})", f"{image_id}: {exc}"
            if attempt < image_retries:
                report.retried += 1
        else:
            report.count(reason, text)
            continue
        if pool.n_candidates == 0:
            report.count(NO_CANDIDATE, f"{image_id}: no candidate segment produced")
        store.save(image_id, pool)  # a store that cannot be written stops the build (BoxSupError)
        report.made += 1
    report.seconds, report.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return report


_build_chunk_task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(build_chunk)


def chunks_of(ids: list[str], tasks: int, chunk_size: int | None = None) -> list[list[str]]:
    """``ids`` in consecutive chunks: ``chunk_size`` each, or several per task and at most ``MAX_CHUNK``."""
    if chunk_size is None:
        chunk_size = min(MAX_CHUNK, math.ceil(len(ids) / (tasks * CHUNKS_PER_TASK)))
    chunk_size = max(1, chunk_size)
    return [ids[i: i + chunk_size] for i in range(0, len(ids), chunk_size)]


def cluster_cpus() -> int:
    """The CPUs of the Ray cluster this process is connected to."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def build_store_on_ray(
    dataset: SegmentationDataset,
    data: dict[str, Any],
    store: ProposalStore,
    method: str,
    max_candidates: int = MAX_CANDIDATES,
    seed: int = 0,
    progress: bool = True,
    ids: list[str] | None = None,
    tasks: int | None = None,
    chunk_size: int | None = None,
    image_retries: int = 1,
    max_side: int = MAX_SIDE,
) -> ClusterBuildReport:
    """``build_store`` as Ray tasks: the pools of ``dataset``'s images (or ``ids``) that ``store`` lacks.

    ``data``: the config's ``data`` section ``dataset`` was built from (absolute paths; each task
    rebuilds the dataset from it). ``tasks``: how many run at once (default: every CPU of the
    connected cluster; Ray must be initialised). The store's meta.json is checked and written as
    ``build_store`` does; the store must be readable and writable from every node.
    """
    if tasks is not None and tasks < 1:
        raise BoxSupError(f"--tasks: needs at least 1 task, got {tasks}")
    stored = prepare_store(store, dataset, method, max_candidates, seed, max_side)
    generator(method, max_candidates, seed, max_side)  # an unknown method stops here, not in every task
    wanted = list(dict.fromkeys(dataset.ids if ids is None else ids))
    todo = [image_id for image_id in wanted if image_id not in stored]
    report = ClusterBuildReport(reused=len(wanted) - len(todo), tasks=tasks or cluster_cpus())
    queue = deque(chunks_of(todo, report.tasks, chunk_size))
    args = (data, tuple(dataset.classes), dataset.origin(), canonical(str(store.root)), method, max_candidates, seed)
    pending: dict[ray.ObjectRef, list[str]] = {}
    start = time.perf_counter()
    bar = progress_bar(total=len(wanted), initial=report.reused, desc=f"proposals[{method}]", enabled=progress,
                       unit="img")
    try:
        while queue or pending:
            while queue and len(pending) < report.tasks:
                chunk = queue.popleft()
                pending[_build_chunk_task.remote(*args, chunk, image_retries, max_side)] = chunk
                report.chunks += 1
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            chunk = pending.pop(ref)
            try:
                part = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, BoxSupError):
                    raise BoxSupError(str(exc.cause)) from None
                part = _lost(queue, chunk, exc)
            except ray.exceptions.RayError as exc:  # its worker died more often than Ray retries
                part = _lost(queue, chunk, exc)
            if part is not None:
                report.add(part)
                bar.update(len(chunk))
    finally:
        for ref in pending:
            ray.cancel(ref)
        bar.close()
    report.wall_seconds = time.perf_counter() - start
    for failure in report.failures:  # each image once, from the driver
        log.warning("skipped %s", failure)
    for reason, n in report.skipped.items():
        log.warning("%d images: %s (e.g. %s)", n, reason, report.examples[reason])
    return report


def _lost(queue: deque, chunk: list[str], exc: Exception) -> ChunkReport | None:
    """A chunk whose task failed for good: its images queued again one per task (None), or the
    report of its single image, counted out with the failure as its reason."""
    if len(chunk) > 1:
        log.warning("a proposal task failed (%s); its %d images are retried one per task", type(exc).__name__, len(chunk))
        queue.extend([image_id] for image_id in chunk)
        return None
    part = ChunkReport()
    part.count(f"task failed ({type(exc).__name__})", f"{chunk[0]}: {(str(exc).splitlines() or [''])[0]}")
    return part
