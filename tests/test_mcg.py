"""MCG import: released-structure .mat files (written with scipy.io.savemat) into a proposal store."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import scipy.io
import yaml

from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.sources import build_training_set
from boxsup.data.synth import generate_dataset
from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.proposals.generate import generator, store_meta
from boxsup.proposals.mcg import MALFORMED, MISSING, SIZE, import_mcg, mcg_pool, read_mcg_mat
from boxsup.proposals.store import ProposalStore

SIZE_PX = 40  # the synthetic images are SIZE_PX x SIZE_PX
N_IMAGES = 3


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A tiny VOC-layout dataset (split trainval: every image) and its reader."""
    root = tmp_path_factory.mktemp("mcg_data")
    generate_dataset(root, n_images=N_IMAGES, size=SIZE_PX, seed=3)
    return root, VOCDataset(root, "trainval", tuple((root / "classes.txt").read_text().split()))


def quadrants(dtype=np.uint16, ids=(1, 2, 3, 4), shape=(SIZE_PX, SIZE_PX)) -> np.ndarray:
    """A superpixel map of four quadrants carrying ``ids`` (row-major: top-left, top-right, ...)."""
    h, w = shape
    out = np.empty(shape, dtype=dtype)
    out[: h // 2, : w // 2], out[: h // 2, w // 2 :], out[h // 2 :, : w // 2], out[h // 2 :, w // 2 :] = ids
    return out


def write_mcg(path, superpixels, labels, scores, **extra) -> None:
    """One file in the released structure: labels an N x 1 cell array, scores N x 1 double."""
    cells = np.empty((len(labels), 1), dtype=object)
    for i, ids in enumerate(labels):
        cells[i, 0] = np.array(ids, dtype=np.uint32).reshape(1, -1)
    scipy.io.savemat(str(path), {"superpixels": superpixels, "labels": cells,
                                 "scores": np.asarray(scores, dtype=np.float64).reshape(-1, 1), **extra})


LABELS = [[1, 2], [3], [1, 2, 3, 4], [], [2, 4]]
SCORES = [0.5, 0.9, 0.1, 0.95, 0.9]
BY_SCORE = [1, 4, 0, 2]  # the empty candidate 3 dropped; the 0.9 tie kept in file order


def rows(pool) -> list[list[int]]:
    m = pool.membership
    return [sorted(m.indices[m.indptr[i] : m.indptr[i + 1]].tolist()) for i in range(pool.n_candidates)]


def write_all(mat_dir, ids, skip=()) -> None:
    mat_dir.mkdir(exist_ok=True)
    for k, image_id in enumerate(ids):
        if image_id not in skip:
            write_mcg(mat_dir / f"{image_id}.mat", quadrants(np.uint16 if k % 2 else np.uint32), LABELS, SCORES,
                      bboxes=np.array([[9, 9, 1, 1]] * len(LABELS), dtype=np.float64))  # ignored


def test_pool_is_what_the_file_says(voc, tmp_path):
    root, dataset = voc
    write_all(tmp_path / "mat", dataset.ids)
    store = ProposalStore(tmp_path / "store")
    report = import_mcg(dataset, tmp_path / "mat", store, max_candidates=10, progress=False)
    assert (report.made, report.reused, dict(report.skipped)) == (N_IMAGES, 0, {})
    meta = store.read_meta()
    assert (meta["method"], meta["max_candidates"], meta["split"]) == ("mcg", 10, "trainval")
    for image_id in dataset.ids:
        pool = store.load(image_id, (SIZE_PX, SIZE_PX))
        np.testing.assert_array_equal(pool.atoms, quadrants(np.int32) - 1)
        assert rows(pool) == [sorted(i - 1 for i in LABELS[k]) for k in BY_SCORE]
        # boxes come from the superpixels: candidate [2, 4] is the right half
        assert pool.boxes()[1].tolist() == [SIZE_PX // 2, 0, SIZE_PX, SIZE_PX]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
def test_missing_superpixel_ids_are_compacted(tmp_path, dtype):
    path = tmp_path / "a.mat"
    write_mcg(path, quadrants(dtype, ids=(2, 5, 5, 7)), [[2], [3, 5], [7, 2], [3]], [3, 2, 1, 4])
    atoms, candidates, scores = read_mcg_mat(path, expected_size=(SIZE_PX, SIZE_PX))
    np.testing.assert_array_equal(atoms, quadrants(np.int32, ids=(0, 1, 1, 2)))
    assert [c.tolist() for c in candidates] == [[0], [1], [2, 0], []]  # id 3 has no pixel: left out
    assert scores.tolist() == [3, 2, 1, 4]
    assert rows(mcg_pool(atoms, candidates, scores, 10)) == [[0], [1], [0, 2]]  # the empty one dropped


def test_top_k_by_score_ties_in_file_order(voc, tmp_path):
    _, dataset = voc
    write_all(tmp_path / "mat", dataset.ids)
    store = ProposalStore(tmp_path / "store")
    import_mcg(dataset, tmp_path / "mat", store, max_candidates=2, progress=False)
    pool = store.load(dataset.ids[0])
    assert rows(pool) == [[2], [1, 3]]  # scores 0.9 (file index 1), 0.9 (index 4); 0.95 is empty


def test_resume_keeps_existing_pools(voc, tmp_path):
    _, dataset = voc
    first, rest = dataset.ids[0], dataset.ids[1:]
    write_all(tmp_path / "mat", dataset.ids, skip=rest)
    store = ProposalStore(tmp_path / "store")
    report = import_mcg(dataset, tmp_path / "mat", store, max_candidates=10, progress=False)
    assert (report.made, report.skipped[MISSING]) == (1, len(rest))
    kept = store.path(first).read_bytes()
    write_mcg(tmp_path / "mat" / f"{first}.mat", quadrants(), [[1]], [1.0])  # changed: must not be read again
    write_all(tmp_path / "mat", rest)
    report = import_mcg(dataset, tmp_path / "mat", store, max_candidates=10, progress=False)
    assert (report.made, report.reused, dict(report.skipped)) == (len(rest), 1, {})
    assert store.path(first).read_bytes() == kept
    with pytest.raises(BoxSupError, match="meta.json: store holds 'mcg' proposals"):  # another cap: another store
        import_mcg(dataset, tmp_path / "mat", store, max_candidates=5, progress=False)


def test_missing_files_are_counted_none_at_all_is_an_error(voc, tmp_path, caplog):
    _, dataset = voc
    missing = dataset.ids[1]
    write_all(tmp_path / "mat", dataset.ids, skip=[missing])
    with caplog.at_level(logging.WARNING):
        report = import_mcg(dataset, tmp_path / "mat", ProposalStore(tmp_path / "store"), 10, progress=False)
    assert (report.made, dict(report.skipped), report.left_out) == (N_IMAGES - 1, {MISSING: 1}, 1)
    assert str(tmp_path / "mat" / f"{missing}.mat") in report.examples[MISSING]
    assert f"{missing}.mat" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(BoxSupError, match=f"^{tmp_path / 'empty'}: no MCG .mat file for any of the {N_IMAGES} images"):
        import_mcg(dataset, tmp_path / "empty", ProposalStore(tmp_path / "store2"), 10, progress=False)
    assert ProposalStore(tmp_path / "store2").read_meta() is None  # nothing written
    with pytest.raises(BoxSupError, match="nowhere: MCG .mat directory not found"):
        import_mcg(dataset, tmp_path / "nowhere", ProposalStore(tmp_path / "store3"), 10, progress=False)


def _cells(*entries) -> np.ndarray:
    out = np.empty((len(entries), 1), dtype=object)
    for i, entry in enumerate(entries):
        out[i, 0] = entry
    return out


GOOD = {"superpixels": quadrants(), "labels": _cells(np.array([[1, 2]])), "scores": np.array([[1.0]])}
MALFORMED_FILES = {
    "not a MAT file": (b"this is not a mat file at all" * 10, "not a readable MAT file"),
    "empty file": (b"", "not a readable MAT file"),
    "no scores": ({k: v for k, v in GOOD.items() if k != "scores"}, "no `scores` variable"),
    "no superpixels": ({k: v for k, v in GOOD.items() if k != "superpixels"}, "no `superpixels` variable"),
    "labels a matrix": (GOOD | {"labels": np.array([[1, 2]])}, "`labels` must be an N x 1 cell array"),
    "labels of strings": (GOOD | {"labels": _cells("ab")}, r"labels\{1\} must hold integer superpixel ids"),
    "superpixels 3-D": (GOOD | {"superpixels": np.ones((4, 4, 2), np.uint16)}, "`superpixels` must be a non-empty H x W map"),
    "superpixels fractional": (GOOD | {"superpixels": quadrants(np.float64) / 3}, "`superpixels` must be a non-empty H x W map"),
    "superpixel id 0": (GOOD | {"superpixels": quadrants(ids=(0, 1, 2, 3))}, "holds id 0; MCG ids start at 1"),
    "label id 0": (GOOD | {"labels": _cells(np.array([[1]]), np.array([[0, 2]]))} | {"scores": np.ones((2, 1))},
                   r"labels\{2\} holds superpixel id 0, outside 1..4"),
    "label id N+1": (GOOD | {"labels": _cells(np.array([[5]]))}, r"labels\{1\} holds superpixel id 5, outside 1..4"),
    "scores count": (GOOD | {"scores": np.ones((3, 1))}, "3 scores for 1 labels"),
    "scores text": (GOOD | {"scores": "high"}, "`scores` must be numeric"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_FILES))
def test_malformed_file_is_a_counted_skip_naming_it(voc, tmp_path, caplog, case):
    _, dataset = voc
    content, message = MALFORMED_FILES[case]
    write_all(tmp_path / "mat", dataset.ids)
    bad = tmp_path / "mat" / f"{dataset.ids[0]}.mat"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        scipy.io.savemat(str(bad), content)
    with caplog.at_level(logging.WARNING):
        report = import_mcg(dataset, tmp_path / "mat", ProposalStore(tmp_path / "store"), 10, progress=False)
    assert (report.made, dict(report.skipped)) == (N_IMAGES - 1, {MALFORMED: 1})
    line = report.examples[MALFORMED]
    assert line.startswith(f"{bad}: ") and "\n" not in line
    assert re.search(message, line), line
    assert str(bad) in caplog.text


def test_wrong_size_is_a_counted_skip_naming_both_sizes(voc, tmp_path, caplog):
    _, dataset = voc
    write_all(tmp_path / "mat", dataset.ids)
    bad = tmp_path / "mat" / f"{dataset.ids[2]}.mat"
    write_mcg(bad, quadrants(shape=(SIZE_PX, SIZE_PX + 10)), LABELS, SCORES)  # 50 wide, 40 high
    with caplog.at_level(logging.WARNING):
        report = import_mcg(dataset, tmp_path / "mat", ProposalStore(tmp_path / "store"), 10, progress=False)
    assert (report.made, dict(report.skipped)) == (N_IMAGES - 1, {SIZE: 1})
    image = dataset.image_path(dataset.ids[2])
    assert report.examples[SIZE] == (f"{bad}: superpixel map is 50x40 but the image {image} is 40x40 (width x height)")
    assert str(bad) in caplog.text


def test_v73_file_says_resave_with_v7(voc, tmp_path):
    _, dataset = voc
    write_all(tmp_path / "mat", dataset.ids)
    bad = tmp_path / "mat" / f"{dataset.ids[0]}.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
    bad.write_bytes(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 512)  # the v7.3 header, HDF5 after
    with pytest.raises(BoxSupError, match=f"^{bad}: MATLAB v7.3 \\(HDF5\\) file.*`-v7`"):
        import_mcg(dataset, tmp_path / "mat", ProposalStore(tmp_path / "store"), 10, progress=False)


def test_method_mcg_is_a_config_choice_that_is_never_computed(voc):
    root, _ = voc
    cfg = load_config(None, [f"data.root={root}", "proposals.method=mcg"])
    assert cfg["proposals"]["method"] == "mcg"
    with pytest.raises(BoxSupError, match=r"^proposals.method mcg: MCG proposals are imported, not computed; "
                                          r"run `boxsup proposals import --format mcg"):
        generator("mcg")


def test_cli_import(voc, tmp_path, capsys):
    root, dataset = voc
    write_all(tmp_path / "mat", dataset.ids)
    out = tmp_path / "store"
    assert main(["proposals", "import", "--format", "mcg", "--mat-dir", str(tmp_path / "mat"), "--data", str(root),
                 "--split", "trainval", "--out", str(out), "--max-candidates", "3"]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: {N_IMAGES} imported, 0 already there, skipped: none"
    assert rows(ProposalStore(out).load(dataset.ids[0])) == [[2], [1, 3], [0, 1]]

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(root), "train_split": "trainval"},
                                      "proposals": {"method": "mcg", "max_candidates": 2, "store": str(tmp_path / "s2")}}))
    (tmp_path / "mat" / f"{dataset.ids[1]}.mat").unlink()
    assert main(["proposals", "import", "--format", "mcg", "--mat-dir", str(tmp_path / "mat"),
                 "--config", str(config), "--out", str(tmp_path / "s2")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{tmp_path / 's2'}: {N_IMAGES - 1} imported, 0 already there, skipped: 1 no .mat file")
    assert "1 image has no pool" in printed
    cfg = load_config(config)  # what a training run checks: this store serves it
    ProposalStore(tmp_path / "s2").check_origin(store_meta(build_training_set(cfg), "mcg", 2, cfg["seed"]))
    assert ProposalStore(tmp_path / "s2").read_meta()["max_candidates"] == 2  # the config's cap

    assert main(["proposals", "import", "--format", "mcg", "--mat-dir", str(tmp_path / "none"), "--data", str(root),
                 "--out", str(tmp_path / "s3")]) == 2
    assert "MCG .mat directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --config and --data together
        main(["proposals", "import", "--format", "mcg", "--mat-dir", "m", "--data", "d", "--config", "c", "--out", "o"])
    # the computing form is unchanged
    assert main(["proposals", "--data", str(root), "--split", "trainval", "--method", "rectangles", "--local",
                 "--out", str(tmp_path / "rect")]) == 0
    assert ProposalStore(tmp_path / "rect").read_meta()["method"] == "rectangles"
    assert main(["proposals", "--out", str(tmp_path / "x")]) == 2
