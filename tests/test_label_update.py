"""One label-update round through the loop's code path (in-process pool): maps, skips, seed."""

import numpy as np
import torch

from boxsup.assign.assigner import AssignmentSpec
from boxsup.assign.rule import LabelUpdateRule
from boxsup.config import load_config
from boxsup.data.annotations import Box, Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.voc import VOCDataset, write_split, write_voc_sample
from boxsup.models import build_model
from boxsup.platform.assign_pool import LocalAssignmentPool
from boxsup.platform.context import LocalContext
from boxsup.proposals.box_masks import rectangle_masks
from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.store import ProposalStore
from boxsup.trainers.epoch import pixel_costs
from boxsup.trainers.job import TrainingJob
from boxsup.trainers.label_round import label_round
from conftest import voc_data_section

CLASSES = ("a", "b")
PAPER = LabelUpdateRule.paper(lam=3.0, k=5)


def make_data(tmp_path):
    rng = np.random.default_rng(0)
    root, store = tmp_path / "data", ProposalStore(tmp_path / "store")
    for i in range(4):
        mask = np.zeros((24, 24), np.uint8)
        mask[4:14, 4:12] = 1
        boxes = [Box(4, 4, 12, 14, 1)] if i != 3 else []  # image 3 has no box
        write_voc_sample(root, f"i{i}", rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), boxes, CLASSES, mask)
        candidates = rng.random((30, 24, 24)) > 0.5
        candidates = np.concatenate([candidates, rectangle_masks((24, 24), np.array([[4, 4, 12, 14]]))])
        pool = CandidatePool.from_masks(candidates if i != 2 else np.zeros((0, 24, 24), bool))  # image 2: empty pool
        store.save(f"i{i}", pool)
    write_split(root, "train", [f"i{i}" for i in range(4)])
    ds = VOCDataset(root, "train", CLASSES)
    return ds, [ds.annotation(i) for i in ds.ids], store


def run_round(tmp_path, ds, anns, store, model, seed, name):
    spec = AssignmentSpec(voc_data_section(ds.root), CLASSES, str(store.root), str(tmp_path / name), PAPER, seed)
    cfg = load_config(None, [f"data.root={ds.root}"])  # the default label update (robust form)
    job = TrainingJob(cfg, anns, str(tmp_path), spec.label_store, str(store.root), logger=None,
                      pool=LocalAssignmentPool(spec))
    ctx = LocalContext(tmp_path, torch.device("cpu"))
    boxed = [a for a in anns if a.supervision == Supervision.BOX]
    summary = label_round(ctx, job, model, 1, boxed, ds, progress=False)
    labels = LabelStore(spec.label_store)
    return summary, {i: labels.read(1, i) for i in summary.labelled}


def test_round_labels_skips_and_seed(tmp_path):
    ds, anns, store = make_data(tmp_path)
    torch.manual_seed(0)
    model = build_model("small", ds.num_classes, "none")
    summary, maps = run_round(tmp_path, ds, anns, store, model, 0, "a")
    assert summary.labelled == ["i0", "i1"]
    assert summary.skipped == {"empty candidate pool": 1, "no box": 1}
    assert summary.boxes == 2 and 0 < summary.metrics()["pseudo_miou"] <= 1
    assert 0 < summary.metrics()["assign_cache_mb"] < 1  # the two pools the actor cached
    for label_map in maps.values():
        assert set(np.unique(label_map)) <= {0, 1}
        assert not label_map[:, 12:].any() and not label_map[14:].any()  # nothing outside the box
    _, again = run_round(tmp_path, ds, anns, store, model, 0, "b")
    _, other = run_round(tmp_path, ds, anns, store, model, 7, "c")
    assert all(np.array_equal(maps[i], again[i]) for i in maps)
    assert any(not np.array_equal(maps[i], other[i]) for i in maps)


def test_mask_supervised_images_are_left_alone(tmp_path):
    ds, anns, store = make_data(tmp_path)
    for ann in anns:
        ann.supervision = Supervision.MASK
    summary, maps = run_round(tmp_path, ds, anns, store, None, 0, "m")
    assert summary.labelled == [] and maps == {} and summary.metrics()["pseudo_miou"] is None


def test_pixel_costs_are_bounded_errors_or_cross_entropy():
    torch.manual_seed(0)
    model = build_model("small", 3, "none")
    image = np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    error, xent = pixel_costs(model, image, torch.device("cpu"), "error"), pixel_costs(model, image, torch.device("cpu"), "xent")
    assert error.shape == (3, 20, 28) and error.min() >= 0 and error.max() <= 1
    np.testing.assert_allclose(error.sum(0), 2.0, rtol=1e-5)  # sum over classes of 1 - P
    np.testing.assert_allclose(error, 1 - np.exp(-xent), atol=1e-5)


def test_atom_level_pseudo_label_confusion_matches_pixels(tmp_path):
    from boxsup.evaluation.metrics import ConfusionMatrix
    from boxsup.platform.assign_pool import SpecAssigner

    ds, anns, store = make_data(tmp_path)
    spec = AssignmentSpec(voc_data_section(ds.root), CLASSES, str(store.root), str(tmp_path / "l"), PAPER, 0)
    assigner = SpecAssigner(spec)
    for round_index in (0, 1):  # the second round uses the cached GT histogram
        result = assigner.assign(round_index, "i0", None)
        expected = ConfusionMatrix(ds.num_classes)
        expected.update(LabelStore(spec.label_store).read(round_index, "i0"), ds.mask("i0"))
        flat = expected.matrix.ravel()
        assert result.confusion == {int(i): int(flat[i]) for i in np.flatnonzero(flat)}


def test_worker_means_round_trip_to_sums(tmp_path):
    from boxsup.assign.assign import BoxedPool, atom_mean_costs

    ds, anns, store = make_data(tmp_path)
    ann = anns[0]
    boxed = BoxedPool.build(store.load("i0"), ann.boxes_array(), ann.labels_array())
    costs = np.random.default_rng(0).random((ds.num_classes, 24, 24))
    means = atom_mean_costs(costs, boxed.pool.atoms, ann.labels_array())
    assert means.dtype == np.float16
    np.testing.assert_allclose(boxed.sums_from_means(means), boxed.loss_sums(costs), rtol=2e-3)


def test_a_corrupt_proposal_file_is_a_counted_skip(tmp_path):
    ds, anns, store = make_data(tmp_path)
    store.path("i1").write_bytes(b"not an npz")
    torch.manual_seed(0)
    summary, maps = run_round(tmp_path, ds, anns, store, build_model("small", ds.num_classes, "none"), 0, "x")
    assert summary.labelled == ["i0"]
    reasons = list(summary.skipped)
    assert any("i1.npz: corrupt proposal file" in r for r in reasons) and summary.skipped["no box"] == 1


def test_round_0_takes_the_lowest_cost_when_greedy_and_draws_among_k_otherwise(tmp_path):
    from dataclasses import replace

    from boxsup.platform.assign_pool import SpecAssigner

    ds, anns, store = make_data(tmp_path)
    box_only = np.zeros((24, 24), np.uint8)
    box_only[4:14, 4:12] = 1  # the exact rectangle: the one candidate whose tight box is the box (E_o = 0)
    spec = AssignmentSpec(voc_data_section(ds.root), CLASSES, str(store.root), str(tmp_path / "l"), PAPER, 0)
    painted = {}
    for greedy in (True, False):
        for seed in range(8):
            run = replace(spec, seed=seed, rule=replace(PAPER, greedy_round0=greedy),
                          label_store=str(tmp_path / f"l{greedy}{seed}"))
            SpecAssigner(run).assign(0, "i0", None)
            painted[greedy, seed] = LabelStore(run.label_store).read(0, "i0")
    assert all(np.array_equal(painted[True, s], box_only) for s in range(8))
    assert any(not np.array_equal(painted[False, s], box_only) for s in range(8))  # the paper's draw among k


def test_rounds_from_greedy_from_take_the_lowest_cost_and_earlier_ones_draw(tmp_path):
    from dataclasses import replace

    from boxsup.platform.assign_pool import SpecAssigner

    ds, anns, store = make_data(tmp_path)
    box_only = np.zeros((24, 24), np.uint8)
    box_only[4:14, 4:12] = 1  # the lowest cost (E_o = 0), as above
    spec = AssignmentSpec(voc_data_section(ds.root), CLASSES, str(store.root), str(tmp_path / "l"),
                          replace(PAPER, greedy_from=3), 0)
    painted = {}
    for seed in range(8):
        run = replace(spec, seed=seed, label_store=str(tmp_path / f"l{seed}"))
        for round_index in (2, 3, 4):
            SpecAssigner(run).assign(round_index, "i0", None)
            painted[round_index, seed] = LabelStore(run.label_store).read(round_index, "i0")
    assert all(np.array_equal(painted[r, s], box_only) for r in (3, 4) for s in range(8))
    assert any(not np.array_equal(painted[2, s], box_only) for s in range(8))
