"""The label update's actor pool: Ray actors that own shards of the proposal store.

Train workers reduce each image's per-pixel costs to per-atom means (float16, a few KB) and submit them
here; the actor owning the image (crc32 of its id modulo the pool size) loads its candidate pool
once, caches it, computes the costs, samples, paints, writes the label map atomically into the
round's label store and returns a few numbers. No image or probability map crosses the driver.
What an actor runs is ``boxsup.assign.assigner.Assigner`` (``SpecAssigner``: opened from the run's
``AssignmentSpec``); this module is only its transport.

A dead actor is replaced by a named successor (``<prefix>-<shard>-<generation>``, created with
``get_if_exists`` so every worker that notices the death converges on the same one) and its
unfinished images are submitted again. Choices do not depend on which actor makes them: each
image's random stream is keyed on (seed, round, image id).
"""

from __future__ import annotations

import logging
import zlib
from typing import Callable

import numpy as np
import ray
from ray.exceptions import RayActorError

from boxsup.assign.assigner import Assigner, AssignmentSpec, ImageResult
from boxsup.data.label_store import LabelStore
from boxsup.data.sources import build_training_set

log = logging.getLogger(__name__)


class SpecAssigner(Assigner):
    """An ``Assigner`` opened from a spec's plain values in the process that runs it: the training set
    rebuilt from ``spec.data``, the label store at ``spec.label_store``. The body of every actor, and of
    the in-process pool."""

    def __init__(self, spec: AssignmentSpec):
        dataset = build_training_set({"data": spec.data}, spec.classes)
        dataset.silence_skips()  # the driver counted and logged what the annotations drop
        super().__init__(spec, dataset, LabelStore(spec.label_store))


AssignmentActor = ray.remote(SpecAssigner)


def shard_of(image_id: str, num_shards: int) -> int:
    """The actor that owns an image: stable across processes and runs."""
    return zlib.crc32(image_id.encode("utf-8")) % num_shards


class AssignmentPool:
    """Handles to ``num_actors`` assignment actors; picklable, so Train workers carry a copy.

    ``submit`` sends one image's loss sums to its owner; ``collect`` waits for everything this copy
    submitted, replacing dead actors and resubmitting their images, and returns one result per
    image. ``on_result`` (tests, progress) sees each result as it arrives.
    """

    def __init__(self, spec: AssignmentSpec, num_actors: int, name_prefix: str, actor_cpus: float = 1.0):
        self.spec = spec
        self.num_actors = num_actors
        self.name_prefix = name_prefix
        self.actor_cpus = actor_cpus
        self.generations = [0] * num_actors
        self.actors = [self._actor(shard, 0) for shard in range(num_actors)]
        self._pending: dict[ray.ObjectRef, tuple[tuple, object]] = {}
        self.replaced = 0

    def _actor(self, shard: int, generation: int):
        return AssignmentActor.options(
            name=f"{self.name_prefix}-{shard}-{generation}", get_if_exists=True, num_cpus=self.actor_cpus,
            max_concurrency=1,
            scheduling_strategy="DEFAULT",  # on the cluster, never inside a Tune trial's placement group
        ).remote(self.spec)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pending"] = {}
        return state

    def submit(
        self, round_index: int, image_id: str, atom_means: np.ndarray | None, previous_round: int | None = None,
    ) -> None:
        actor = self.actors[shard_of(image_id, self.num_actors)]
        args = (round_index, image_id, atom_means, previous_round)
        self._pending[actor.assign.remote(*args)] = (args, actor)

    def _replace(self, shard: int, dead) -> None:
        if self.actors[shard] is dead:  # an earlier failure of the same actor may have replaced it
            self.generations[shard] += 1
            self.actors[shard] = self._actor(shard, self.generations[shard])
            self.replaced += 1
            log.warning("assignment actor %d died; replaced by generation %d", shard, self.generations[shard])

    def collect(self, on_result: Callable[[ImageResult], None] | None = None) -> list[ImageResult]:
        results = []
        while self._pending:
            done, _ = ray.wait(list(self._pending), num_returns=1)
            ref = done[0]
            args, actor = self._pending.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError:
                self._replace(shard_of(args[1], self.num_actors), actor)
                self.submit(*args)
                continue
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def cache_mb(self) -> float:
        """MiB the actors' pool caches hold, summed (an actor that died in between counts 0)."""
        total = 0.0
        for ref in [actor.cache_mb.remote() for actor in self.actors]:
            try:
                total += ray.get(ref)
            except RayActorError:
                pass
        return total

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class LocalAssignmentPool:
    """The same interface as ``AssignmentPool`` without Ray: one in-process ``SpecAssigner``, made on first
    use (so a pool shipped to Ray Train workers carries the spec, not a dataset)."""

    def __init__(self, spec: AssignmentSpec):
        self.spec = spec
        self._assigner: Assigner | None = None
        self._results: list[ImageResult] = []
        self.replaced = 0

    @property
    def assigner(self) -> Assigner:
        if self._assigner is None:
            self._assigner = SpecAssigner(self.spec)
        return self._assigner

    def submit(
        self, round_index: int, image_id: str, atom_means: np.ndarray | None, previous_round: int | None = None,
    ) -> None:
        self._results.append(self.assigner.assign(round_index, image_id, atom_means, previous_round))

    def collect(self, on_result: Callable[[ImageResult], None] | None = None) -> list[ImageResult]:
        results, self._results = self._results, []
        for result in results:
            if on_result is not None:
                on_result(result)
        return results

    def cache_mb(self) -> float:
        return self.assigner.cache_mb()

    def kill(self) -> None:
        pass
