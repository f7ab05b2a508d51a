"""The label update's actor pool: Ray actors that own shards of the proposal store.

Train workers reduce each image's per-pixel costs to per-atom means (float16, a few KB) and submit them
here; the actor owning the image (crc32 of its id modulo the pool size) loads its candidate pool
once, caches it, computes the costs, samples, paints, writes the label map atomically into the
round's label store and returns a few numbers. No image or probability map crosses the driver.

A dead actor is replaced by a named successor (``<prefix>-<shard>-<generation>``, created with
``get_if_exists`` so every worker that notices the death converges on the same one) and its
unfinished images are submitted again. Choices do not depend on which actor makes them: each
image's random stream is keyed on (seed, round, image id).
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import ray
import scipy.sparse as sp
from ray.exceptions import RayActorError

from boxsup.assign import EmptyPoolError, assign_labels, image_rng
from boxsup.assign.assign import ramped_lambda
from boxsup.data.annotations import IGNORE, ImageAnnotation
from boxsup.data.label_store import LabelStore
from boxsup.data.sources import build_training_set
from boxsup.errors import BoxSupError
from boxsup.proposals.store import ProposalFileMissing, ProposalStore
from boxsup.assign.cache import MB, BoxedPoolCache
from boxsup.assign.diagnostics import ChoiceDiagnostics, ReferenceChoices, diagnose, gt_atom_histogram
from boxsup.trainers.faults import Fault, kill

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """What one image's label update returns: a few numbers, never the label map."""

    image_id: str
    boxes: int = 0
    chosen_cost_sum: float = 0.0
    skipped: str | None = None
    confusion: dict[int, int] = field(default_factory=dict)  # flat index -> count, vs the hidden GT
    # audit images only (a hidden mask): the choices' quality, and the confusions of the E_o-best
    # and oracle choices ("eo_best", "oracle") for comparison
    diagnostics: ChoiceDiagnostics | None = None
    reference_confusions: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class AssignmentSpec:
    """Everything an actor needs to label images of one run (plain values, cheap to ship)."""

    data: dict  # the run's config section ``data`` (absolute paths): the actor rebuilds the training set from it
    classes: tuple[str, ...]
    proposal_store: str
    label_store: str
    lam: float
    k: int
    seed: int
    cache_mb: float = 2048.0  # MiB of box-refined pools this actor keeps (once full, new pools are used, not kept)
    trust_margin: float = 1.0  # candidates within this E_o of the box's best are eligible (1: all)
    lam_ramp: int = 0  # rounds over which lambda grows from the first network round (0: at once)
    first_network_round: int = 1
    region_cost: str = "mean"  # E_r: "mean" (two-region mean) or "iou" (1 - soft IoU with the network's mask)
    consensus: float = 0.0  # mu: weight of E_c, the disagreement with the box's near-best candidates
    consensus_margin: float = 0.1  # near-best: E_o within this of the box's best
    sample_margin: float = float("inf")  # draw only among candidates within this of the lowest cost
    void_k: int = 0  # > 1: pixels on which a box's void_k near-best candidates disagree are painted void
    greedy_round0: bool = False  # without the network's costs (round 0) take each box's lowest cost, not a draw
    greedy_from: int | None = None  # rounds from this one on take each box's lowest cost, not a draw (None: never)
    fault: Fault | None = None  # the recovery tests' injected fault (kill-actor), see boxsup.trainers.faults


class Assigner:
    """Labels images of one run in-process; the body of every actor, and the pool's local stand-in."""

    def __init__(self, spec: AssignmentSpec):
        self.spec = spec
        self.dataset = build_training_set({"data": spec.data}, spec.classes)
        self.dataset.silence_skips()  # the driver counted and logged what the annotations drop
        self._unreadable: dict[str, str | None] = {}  # image id -> why its pixels cannot be read (None: they can)
        self.pools = BoxedPoolCache(ProposalStore(spec.proposal_store), int(spec.cache_mb * MB),
                                    spec.consensus_margin if spec.consensus else None)
        self.labels = LabelStore(spec.label_store)
        self._annotations: dict[str, ImageAnnotation] = {}
        self._gt_histograms: dict[str, sp.csr_matrix] = {}
        self._references: dict[str, ReferenceChoices] = {}  # audit images: fixed for the run, a few numbers each
        self._assigned: Counter = Counter()  # images labelled per round (for the kill-actor fault)

    def cache_mb(self) -> float:
        """MiB held by this assigner's pool cache."""
        return self.pools.nbytes / MB

    def annotation(self, image_id: str) -> ImageAnnotation:
        if image_id not in self._annotations:
            self._annotations[image_id] = self.dataset.annotation(image_id)
        return self._annotations[image_id]

    def assign(
        self, round_index: int, image_id: str, atom_means: np.ndarray | None, previous_round: int | None = None,
    ) -> ImageResult:
        """Label one image for ``round_index`` from a worker's per-atom mean costs (None: E_o alone).

        ``previous_round``: the round before this one, whose label map the diagnostics compare with.
        """
        self._assigned[round_index] += 1
        if self.spec.fault and self._assigned[round_index] == 2 and self.spec.fault.fires("kill-actor", round_index):
            kill()
        ann = self.annotation(image_id)
        if not ann.boxes:
            return ImageResult(image_id, skipped="no box")
        try:
            boxed = self.pools.get(ann)
        except EmptyPoolError:
            return ImageResult(image_id, skipped="empty candidate pool")
        except ProposalFileMissing as exc:  # often because the build could not read the image: say that
            return ImageResult(image_id, skipped=self.unreadable(image_id) or str(exc))
        except BoxSupError as exc:  # a corrupt proposal file: this image sits the round out
            return ImageResult(image_id, skipped=str(exc))
        rng = image_rng(self.spec.seed, round_index, image_id)
        loss_sums = boxed.sums_from_means(atom_means) if atom_means is not None else None
        lam = ramped_lambda(self.spec.lam, round_index, self.spec.first_network_round, self.spec.lam_ramp)
        greedy = (loss_sums is None and self.spec.greedy_round0) or (
            self.spec.greedy_from is not None and round_index >= self.spec.greedy_from)
        k = 1 if greedy else self.spec.k
        result = assign_labels(boxed, loss_sums, lam if loss_sums is not None else 0.0, k, rng,
                               self.spec.trust_margin, self.spec.region_cost, self.spec.sample_margin,
                               self.spec.void_k, self.spec.consensus,
                               self.spec.consensus_margin)
        self.labels.write(round_index, image_id, result.label_map)
        out = ImageResult(image_id, len(result.chosen), float(result.chosen_cost.sum()))
        if ann.has_mask:
            self.audit(out, boxed, result, round_index, previous_round, loss_sums)
        return out

    def unreadable(self, image_id: str) -> str | None:
        """Why the image's pixels cannot be decoded (its one line, naming the file), or None; decoded once."""
        if image_id not in self._unreadable:
            try:
                self.dataset.image(image_id)
                self._unreadable[image_id] = None
            except BoxSupError as exc:
                self._unreadable[image_id] = f"{exc}: no proposal pool, left out of training"
        return self._unreadable[image_id]

    def audit(self, out: ImageResult, boxed, result, round_index: int, previous_round: int | None,
              loss_sums: np.ndarray | None = None) -> None:
        """Score an image's new labels against its hidden mask (``pseudo_miou`` and the choice diagnostics;
        with the network's ``loss_sums``, its own mask's GT IoU too)."""
        hist = self.gt_histogram(out.image_id, boxed.pool.atoms)
        out.confusion = self.pseudo_label_confusion(hist, result.atom_labels)
        previous = None
        if previous_round is not None and self.labels.has(previous_round, out.image_id):
            previous = self.labels.read(previous_round, out.image_id)
        if out.image_id not in self._references:
            self._references[out.image_id] = ReferenceChoices.build(boxed, hist)
        box_class_loss = None
        if loss_sums is not None:
            box_class_loss = loss_sums[:, boxed.box_columns] * boxed.inside
        out.diagnostics, eo_best, oracle = diagnose(boxed, result.chosen, hist, result.label_map, previous,
                                                    self._references[out.image_id], box_class_loss)
        out.reference_confusions = {"eo_best": self.pseudo_label_confusion(hist, eo_best),
                                    "oracle": self.pseudo_label_confusion(hist, oracle)}
        if result.void is not None:  # assign.void_k: the labels on the pixels that train
            out.reference_confusions["kept"] = self.pseudo_label_confusion(hist, result.atom_labels, result.void)

    def gt_histogram(self, image_id: str, atoms: np.ndarray) -> sp.csr_matrix:
        """The hidden GT as a sparse atom-by-class pixel-count histogram (void left out), read once per image.

        A few KB per image, so later rounds cost one bincount over atoms, not a pass over the pixels.
        """
        if image_id not in self._gt_histograms:
            self._gt_histograms[image_id] = gt_atom_histogram(self.dataset.mask(image_id), atoms, self.dataset.num_classes)
        return self._gt_histograms[image_id]

    def pseudo_label_confusion(self, hist: sp.csr_matrix, atom_labels: np.ndarray,
                               void: np.ndarray | None = None) -> dict[int, int]:
        """Confusion of atom labels against the GT histogram, as {flat index: count}; ``void`` atoms left out."""
        n = self.dataset.num_classes
        rows = np.repeat(np.arange(hist.shape[0]), np.diff(hist.indptr))
        indices, weights = hist.indices, hist.data
        if void is not None:
            keep = ~void[rows]
            rows, indices, weights = rows[keep], indices[keep], weights[keep]
        flat = np.bincount(indices * n + atom_labels[rows], weights=weights, minlength=n * n)
        return {int(i): int(flat[i]) for i in np.flatnonzero(flat)}


AssignmentActor = ray.remote(Assigner)


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
    """The same interface as ``AssignmentPool`` without Ray: one in-process ``Assigner``, made on first use
    (so a pool shipped to Ray Train workers carries the spec, not a dataset)."""

    def __init__(self, spec: AssignmentSpec):
        self.spec = spec
        self._assigner: Assigner | None = None
        self._results: list[ImageResult] = []
        self.replaced = 0

    @property
    def assigner(self) -> Assigner:
        if self._assigner is None:
            self._assigner = Assigner(self.spec)
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
