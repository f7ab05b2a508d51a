"""Proposal and label stores: round trips, atomic writes, missing and corrupt files, resumable builds."""

import numpy as np
import pytest

from boxsup.data.annotations import Box
from boxsup.data.label_store import LabelStore
from boxsup.data.voc import VOCDataset, write_split, write_voc_sample
from boxsup.errors import BoxSupError
from boxsup.proposals.box_masks import grabcut, rectangles
from boxsup.proposals.generate import build_store
from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.store import ProposalStore


def test_proposal_round_trip(tmp_path):
    masks = np.random.default_rng(0).random((5, 12, 9)) > 0.6
    pool = CandidatePool.from_masks(masks)
    store = ProposalStore(tmp_path)
    store.save("a", pool)
    back = store.load("a")
    np.testing.assert_array_equal(back.atoms, pool.atoms)
    np.testing.assert_array_equal(back.membership.toarray(), pool.membership.toarray())
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temp file left behind


def test_missing_and_corrupt_proposal_files(tmp_path):
    store = ProposalStore(tmp_path)
    with pytest.raises(BoxSupError, match="b.npz: proposal file missing"):
        store.load("b")
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(BoxSupError, match="c.npz: corrupt proposal file"):
        store.load("c")


def test_label_store_round_trip(tmp_path):
    store = LabelStore(tmp_path)
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    store.write(2, "x", label)
    np.testing.assert_array_equal(store.read(2, "x"), label)
    assert store.has(2, "x") and not store.has(1, "x")
    with pytest.raises(BoxSupError, match="label map missing"):
        store.read(1, "x")


def test_box_baselines():
    image = np.zeros((40, 40, 3), np.uint8)
    image[10:30, 12:28] = (200, 40, 40)
    image += np.random.default_rng(0).integers(0, 20, image.shape, dtype=np.uint8)
    boxes = np.array([[8, 6, 32, 34]])
    rect = rectangles(image, boxes)
    assert rect.n_candidates == 1 and rect.areas()[0] == 24 * 28
    cut = grabcut(image, boxes)
    mask = cut.mask(0)
    truth = np.zeros((40, 40), bool)
    truth[10:30, 12:28] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.8  # GrabCut finds the object, not the box


def test_build_store_resumes_and_refuses_other_methods(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_voc_sample(root, f"i{i}", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), [Box(2, 2, 10, 10, 1)], ("a",))
    write_split(root, "train", ["i0", "i1", "i2"])
    ds = VOCDataset(root, "train", ("a",))
    store = ProposalStore(tmp_path / "store")
    assert build_store(ds, store, "rectangles", progress=False).made == 3
    (tmp_path / "store" / "i1.npz").unlink()
    report = build_store(ds, store, "rectangles", progress=False)
    assert (report.made, report.reused) == (1, 2)
    with pytest.raises(BoxSupError, match="store holds 'rectangles' proposals"):
        build_store(ds, store, "grabcut", progress=False)
