"""The batched label round (loader workers, size batches, cached split maps, on-device reduction)
gives the label maps of the one-image-at-a-time path it replaced, for the same seed."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from boxsup.assign.assign import atom_mean_costs
from boxsup.assign.assigner import AssignmentSpec
from boxsup.assign.rule import LabelUpdateRule
from boxsup.config import DEFAULTS
from boxsup.data.annotations import Box
from boxsup.data.label_store import LabelStore
from boxsup.data.voc import VOCDataset, write_split, write_voc_sample
from boxsup.errors import BoxSupError
from boxsup.models import build_model
from boxsup.platform.assign_pool import LocalAssignmentPool
from boxsup.platform.context import LocalContext
from boxsup.proposals.box_masks import rectangle_masks
from boxsup.proposals.pool import CandidatePool, split_atoms_by_boxes
from boxsup.proposals.store import ProposalStore
from boxsup.trainers.epoch import batch_log_probs, pixel_costs
from boxsup.trainers.job import TrainingJob
from boxsup.trainers.label_inputs import SplitAtomCache, SplitAtoms, reduce_to_atoms, size_batches
from boxsup.trainers.label_round import label_round
from conftest import voc_data_section

CLASSES = ("a", "b", "c")
SIZES = [(40, 48), (32, 40), (40, 48), (48, 36), (40, 48), (32, 40), (40, 48)]


def blob_masks(rng, shape, n):
    """Blocky random masks: coarse random grids upsampled, like unions of superpixels."""
    h, w = shape
    coarse = rng.random((n, h // 4 + 1, w // 4 + 1)) > 0.6
    return coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :h, :w]


def make_data(tmp_path):
    """Images of three sizes with 1-3 boxes; image 5's proposal file is corrupt, image 6 has no box."""
    rng = np.random.default_rng(3)
    root, store = tmp_path / "data", ProposalStore(tmp_path / "store")
    ids = []
    for i, (h, w) in enumerate(SIZES):
        boxes = []
        for b in range(1 + i % 3 if i != 6 else 0):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            boxes.append(Box(x0, y0, int(rng.integers(x0 + 6, w + 1)), int(rng.integers(y0 + 6, h + 1)), 1 + (i + b) % 3))
        mask = np.zeros((h, w), np.uint8)
        for box in boxes:
            mask[box.y0 : box.y1, box.x0 : box.x1] = box.label
        image_id = f"im{i}"
        write_voc_sample(root, image_id, rng.integers(0, 255, (h, w, 3), dtype=np.uint8), boxes, CLASSES, mask)
        rects = rectangle_masks((h, w), np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes]).reshape(-1, 4))
        store.save(image_id, CandidatePool.from_masks(np.concatenate([blob_masks(rng, (h, w), 25), rects])))
        ids.append(image_id)
    store.path("im5").write_bytes(b"not an npz")
    write_split(root, "train", ids)
    ds = VOCDataset(root, "train", CLASSES)
    return ds, [ds.annotation(i) for i in ds.ids], store


class RecordingPool(LocalAssignmentPool):
    """The in-process pool, remembering the per-atom means each image was sent."""

    def __init__(self, spec):
        super().__init__(spec)
        self.sent = {}

    def submit(self, round_index, image_id, atom_means, previous_round=None):
        self.sent[image_id] = atom_means
        super().submit(round_index, image_id, atom_means, previous_round)


def spec_for(tmp_path, ds, store, name, seed=0):
    rule = replace(LabelUpdateRule.paper(lam=3.0, k=5), region_cost="iou")
    return AssignmentSpec(voc_data_section(ds.root), CLASSES, str(store.root), str(tmp_path / name), rule, seed)


def reference_round(tmp_path, ds, anns, store, model, round_index, name, kind, flip=False):
    """The label round as it was before the speed work: one image at a time, nothing cached."""
    pool = RecordingPool(spec_for(tmp_path, ds, store, name))
    for ann in anns:
        sums = None
        if ann.boxes:
            try:
                atoms = store.load_atoms(ann.image_id, expected_shape=(ann.height, ann.width))
                atoms = split_atoms_by_boxes(atoms, ann.boxes_array())[0]
            except BoxSupError:
                atoms = None
            if atoms is not None:
                costs = pixel_costs(model, ds.image(ann.image_id), torch.device("cpu"), kind, flip)
                sums = atom_mean_costs(costs, atoms, ann.labels_array())
        pool.submit(round_index, ann.image_id, sums)
    results = pool.collect()
    labels = LabelStore(pool.assigner.spec.label_store)
    return {r.image_id: labels.read(round_index, r.image_id) for r in results if r.skipped is None}, pool.sent


def batched_rounds(tmp_path, ds, anns, store, model, rounds, name, kind, workers, cache, flip=False):
    pool = RecordingPool(spec_for(tmp_path, ds, store, name))
    # the scoring side of the rule (score_flip): the robust defaults when flipped, else the paper form
    cfg = copy.deepcopy(DEFAULTS)
    cfg["assign"].update(pixel_cost=kind, lam=3.0, form="robust" if flip else "paper")
    cfg["train"].update(batch_size=3, loader_workers=workers)
    job = TrainingJob(cfg, anns, str(tmp_path), pool.assigner.spec.label_store, str(store.root), logger=None, pool=pool)
    ctx = LocalContext(tmp_path, torch.device("cpu"))
    labels, out = LabelStore(pool.assigner.spec.label_store), []
    for round_index in rounds:
        summary = label_round(ctx, job, model, round_index, anns, ds, progress=False, cache=cache)
        out.append(({i: labels.read(round_index, i) for i in summary.labelled}, dict(pool.sent), summary))
    return out


def inside_atoms(store, ann):
    return split_atoms_by_boxes(store.load_atoms(ann.image_id), ann.boxes_array())[2].any(axis=1)


@pytest.mark.parametrize("kind, flip", [("error", False), ("xent", False), ("error", True)])
def test_batched_round_gives_the_one_image_path_maps(tmp_path, kind, flip):
    ds, anns, store = make_data(tmp_path)
    torch.manual_seed(0)
    model = build_model("small", ds.num_classes, "none")
    cache = SplitAtomCache(1 << 20)
    rounds = batched_rounds(tmp_path, ds, anns, store, model, [1, 2], "new", kind, 0, cache, flip)
    assert len(cache) == 5  # every image with boxes and a readable proposal file, split once
    for round_index, (maps, sent, summary) in zip([1, 2], rounds):  # round 2 runs on the cached split maps
        expected, expected_sent = reference_round(tmp_path, ds, anns, store, model, round_index, f"ref{round_index}",
                                                  kind, flip)
        assert sorted(maps) == sorted(expected) == ["im0", "im1", "im2", "im3", "im4"]
        assert summary.skipped == {"no box": 1, next(r for r in summary.skipped if "im5" in r): 1}
        for image_id in expected:
            np.testing.assert_array_equal(maps[image_id], expected[image_id])
            inside = inside_atoms(store, ds.annotation(image_id))  # what E_r reads: the same means, to a float16 ulp
            np.testing.assert_allclose(sent[image_id][inside].astype(np.float32),
                                       expected_sent[image_id][inside].astype(np.float32), rtol=1e-3, atol=1e-7)


def test_loader_workers_change_nothing(tmp_path):
    ds, anns, store = make_data(tmp_path)
    torch.manual_seed(1)
    model = build_model("small", ds.num_classes, "none")
    (alone, sent_alone, _), = batched_rounds(tmp_path, ds, anns, store, model, [1], "w0", "error", 0, SplitAtomCache(0))
    (loaded, sent_loaded, _), = batched_rounds(tmp_path, ds, anns, store, model, [1], "w2", "error", 2, SplitAtomCache(0))
    assert sorted(alone) == sorted(loaded) and len(alone) == 5
    for image_id in alone:
        np.testing.assert_array_equal(alone[image_id], loaded[image_id])
        np.testing.assert_array_equal(sent_alone[image_id], sent_loaded[image_id])


def test_size_batches_hold_one_size_and_every_image_once(tmp_path):
    ds, anns, _ = make_data(tmp_path)
    batches = size_batches(anns, 2)
    assert sorted(i for b in batches for i in b) == list(range(len(anns)))
    for batch in batches:
        assert 1 <= len(batch) <= 2 and len({(anns[i].height, anns[i].width) for i in batch}) == 1


def test_a_batch_gives_each_image_its_batch_of_one_costs():
    """Within a float32 ulp or two: a batch may pick other convolution kernels than a batch of one."""
    torch.manual_seed(0)
    model = build_model("small", 4, "none")
    images = torch.randn(3, 3, 40, 48)
    together = batch_log_probs(model, images, torch.device("cpu"))
    for i in range(3):
        alone = batch_log_probs(model, images[i : i + 1], torch.device("cpu"))[0]
        torch.testing.assert_close(together[i], alone, rtol=1e-6, atol=1e-6)


def test_flip_scoring_averages_the_image_and_its_mirror_back_in_place():
    torch.manual_seed(0)
    model = build_model("small", 4, "none")
    images = torch.randn(2, 3, 40, 48)
    flipped = batch_log_probs(model, images, torch.device("cpu"), flip=True)
    plain = batch_log_probs(model, images, torch.device("cpu")).exp()
    mirrored = batch_log_probs(model, images.flip(-1), torch.device("cpu")).exp().flip(-1)
    torch.testing.assert_close(flipped.exp(), (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flipped.exp().sum(1), torch.ones(2, 40, 48))  # still a distribution per pixel
    # the mirror image scores as the mirror of the image's scores
    torch.testing.assert_close(batch_log_probs(model, images.flip(-1), torch.device("cpu"), flip=True),
                               flipped.flip(-1), rtol=1e-5, atol=1e-5)


def test_the_split_cache_stays_within_its_bytes(tmp_path):
    ds, anns, store = make_data(tmp_path)
    splits = {a.image_id: SplitAtoms.build(store.load_atoms(a.image_id), a) for a in anns[:5]}
    budget = sum(s.nbytes for s in list(splits.values())[:3])
    cache = SplitAtomCache(budget)
    for image_id, split in splits.items():
        cache.put(image_id, split)
        assert cache.nbytes <= budget
    assert len(cache) == 3 and cache.get("im4") is None and cache.get("im0") is splits["im0"]


def batch_of_splits(tmp_path, n: int = 4):
    ds, anns, store = make_data(tmp_path)
    anns = [a for a in anns if (a.height, a.width) == (40, 48) and a.boxes][:n]
    splits = [SplitAtoms.build(store.load_atoms(a.image_id), a) for a in anns]
    log_probs = torch.log_softmax(torch.randn(len(anns), ds.num_classes, 40, 48, dtype=torch.float64), 1).float()
    return splits, log_probs


def test_a_batch_reduction_gives_each_image_its_own_means(tmp_path):
    """``reduce_to_atoms`` lays every image's (label, atom) sums side by side: each image gets back exactly
    what it gets alone, whatever the other images' label sets and atom counts."""
    splits, log_probs = batch_of_splits(tmp_path)
    assert len({len(s.loss_labels) for s in splits}) > 1 or len({len(s.areas) for s in splits}) > 1
    together = reduce_to_atoms(splits, log_probs, "xent").means()
    for split, image_log_probs, means in zip(splits, log_probs, together):
        np.testing.assert_array_equal(means, split.mean_costs(image_log_probs, "xent"))
        assert means.shape == (len(split.areas), len(split.loss_labels)) and means.dtype == np.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_device_reduction_matches_the_cpu_one(tmp_path):
    splits, log_probs = batch_of_splits(tmp_path)
    np.testing.assert_array_equal(splits[0].mean_costs(log_probs[0]), splits[0].mean_costs(log_probs[0].cuda()))
    for cpu, gpu in zip(reduce_to_atoms(splits, log_probs).means(), reduce_to_atoms(splits, log_probs.cuda()).means()):
        np.testing.assert_array_equal(cpu, gpu)


def test_the_chosen_gt_iou_is_the_full_tables_entry(tmp_path):
    from boxsup.assign.assign import BoxedPool
    from boxsup.assign.diagnostics import candidate_gt_iou, chosen_gt_iou
    from boxsup.platform.assign_pool import SpecAssigner

    ds, anns, store = make_data(tmp_path)
    assigner = SpecAssigner(spec_for(tmp_path, ds, store, "d"))
    rng = np.random.default_rng(0)
    for ann in anns[:5]:
        boxed = BoxedPool.build(store.load(ann.image_id), ann.boxes_array(), ann.labels_array())
        hist = assigner.gt_histogram(ann.image_id, boxed.pool.atoms)
        table = candidate_gt_iou(boxed, hist)
        chosen = rng.integers(0, boxed.pool.n_candidates, len(ann.boxes))
        np.testing.assert_array_equal(chosen_gt_iou(boxed, chosen, hist), table[chosen, np.arange(len(chosen))])
