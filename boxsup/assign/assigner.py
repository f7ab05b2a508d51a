"""One run's label update, image by image, in-process: the code each assignment actor runs.

``Assigner`` labels an image of a round from the per-atom mean costs a worker sent (None: E_o
alone): it loads and caches the image's box-refined pool, applies the run's ``LabelUpdateRule``,
writes the label map into the round's label store and returns a few numbers (``ImageResult``),
scoring the labels against the hidden mask of an audit image. It is given the training set and the
label store (``TrainingImages``, ``LabelMaps``); ``boxsup.platform.assign_pool.SpecAssigner`` opens
them from an ``AssignmentSpec``'s plain values in the process that runs it (each Ray actor, or the
in-process pool). No Ray here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from boxsup.assign.assign import EmptyPoolError, assign_labels
from boxsup.assign.cache import MB, BoxedPoolCache
from boxsup.assign.diagnostics import ChoiceDiagnostics, ReferenceChoices, diagnose, gt_atom_histogram
from boxsup.assign.rule import LabelUpdateRule
from boxsup.assign.sampling import image_rng
from boxsup.data.annotations import ImageAnnotation
from boxsup.errors import BoxSupError
from boxsup.proposals.store import ProposalFileMissing, ProposalStore
from boxsup.utils.faults import Fault, kill


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
    rule: LabelUpdateRule  # how labels are chosen: LabelUpdateRule.from_config(cfg) for a run
    seed: int
    cache_mb: float = 2048.0  # MiB of box-refined pools this actor keeps (once full, new pools are used, not kept)
    fault: Fault | None = None  # the recovery tests' injected fault (kill-actor), see boxsup.utils.faults

    def __post_init__(self) -> None:
        if not isinstance(self.rule, LabelUpdateRule):  # a call still passing (lam, k, seed) would shift silently
            raise TypeError(f"AssignmentSpec.rule: a LabelUpdateRule, not {self.rule!r}")


class TrainingImages(Protocol):
    """What an ``Assigner`` reads of the run's training set (a ``SegmentationDataset``)."""

    @property
    def num_classes(self) -> int: ...

    def annotation(self, image_id: str) -> ImageAnnotation: ...

    def image(self, image_id: str) -> np.ndarray: ...

    def mask(self, image_id: str) -> np.ndarray | None: ...


class LabelMaps(Protocol):
    """Where an ``Assigner`` keeps each round's label maps (a ``LabelStore``)."""

    def write(self, round_index: int, image_id: str, label_map: np.ndarray) -> None: ...

    def read(self, round_index: int, image_id: str) -> np.ndarray: ...

    def has(self, round_index: int, image_id: str) -> bool: ...


class Assigner:
    """Labels images of one run in-process; the body of every actor, and the pool's local stand-in.

    ``dataset``: the run's training set (``spec.data``); ``labels``: the label store at ``spec.label_store``.
    """

    def __init__(self, spec: AssignmentSpec, dataset: TrainingImages, labels: LabelMaps):
        self.spec = spec
        self.dataset = dataset
        self._unreadable: dict[str, str | None] = {}  # image id -> why its pixels cannot be read (None: they can)
        self.pools = BoxedPoolCache(ProposalStore(spec.proposal_store), int(spec.cache_mb * MB),
                                    spec.rule.consensus_margin if spec.rule.consensus else None)
        self.labels = labels
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
        result = assign_labels(boxed, loss_sums, self.spec.rule, round_index, rng)
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
            mask = self.dataset.mask(image_id)
            assert mask is not None, f"{image_id}: audited without a mask"  # audit runs where ann.has_mask
            self._gt_histograms[image_id] = gt_atom_histogram(mask, atoms, self.dataset.num_classes)
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
