"""Bad input, case by case: a one-line BoxSupError naming the file or key, or a counted skip; never a traceback.

Every case that touches files checks that nothing was written, changed or lost. The data is the
synthetic demo set at its smallest (4 images of 48 px: 3 train, 1 val), written once per module
and copied per test.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from boxsup.assign.cache import BoxedPoolCache
from boxsup.cli import build_parser, main
from boxsup.config import BOUNDS, DEFAULTS, flatten, load_config
from boxsup.data.sources import resolve_classes
from boxsup.data.synth import DEMO_CLASSES, generate_dataset
from boxsup.data.voc import SizeMismatchError, VOCDataset
from boxsup.errors import BoxSupError
from boxsup.evaluation.crf import CRFParams
from boxsup.evaluation.evaluate import EvalData, checkpoint_model, evaluate
from boxsup.models import build_model
from boxsup.models.checkpoint import load_checkpoint
from boxsup.proposals.generate import build_store, store_meta
from boxsup.proposals.store import ProposalStore
from boxsup.serving.trained_model import read_checkpoint
from conftest import voc_data_section

ID = "synth_000001"  # the first training image (train: 000001, 000002, 000004; val: 000003)
SIZE = 48


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "data"
    generate_dataset(root, n_images=4, size=SIZE, seed=0)
    return root


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny dataset."""
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes: equal snapshots mean nothing written or lost."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def raises_one_line(call: Callable[[], object], pattern: str, kind: type[BoxSupError] = BoxSupError) -> BoxSupError:
    with pytest.raises(kind, match=pattern) as err:
        call()
    one_line(str(err.value))
    return err.value


def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and one stderr line ``boxsup: error: ...``; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("boxsup: error: ") and err.count("\n") == 1, err
    return err


def dataset(root: Path, split: str = "train") -> VOCDataset:
    return VOCDataset(root, split, DEMO_CLASSES)


def xml_path(root: Path, image_id: str = ID) -> Path:
    return root / "Annotations" / f"{image_id}.xml"


def jpeg(root: Path, image_id: str = ID) -> Path:
    return root / "JPEGImages" / f"{image_id}.jpg"


def png(root: Path, image_id: str = ID) -> Path:
    return root / "SegmentationClass" / f"{image_id}.png"


def edit_xml(root: Path, old: str, new: str) -> None:
    text = xml_path(root).read_text()
    assert old in text
    xml_path(root).write_text(text.replace(old, new, 1))


def set_objects(root: Path, objects: str) -> None:
    text = xml_path(root).read_text()
    xml_path(root).write_text(text[: text.index("<object>")] + objects + "</annotation>\n")


def box(name: str, x0: object, y0: object, x1: object, y1: object) -> str:
    return f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"


def save_png(path: Path, array: np.ndarray, mode: str) -> None:
    Image.fromarray(array, mode=mode).save(path, format="PNG")


# ---------------------------------------------------------------- images, annotations, masks: the image is left out

BROKEN_IMAGES = {
    "corrupt jpeg": (lambda r: jpeg(r).write_bytes(b"\xff\xd8 not really a jpeg"), rf"{ID}.jpg: cannot decode image", BoxSupError),
    "missing jpeg": (lambda r: jpeg(r).unlink(), rf"{ID}.jpg: image file not found", BoxSupError),
    "jpeg cut inside its header": (lambda r: jpeg(r).write_bytes(jpeg(r).read_bytes()[:200]), rf"{ID}.jpg: cannot decode image", BoxSupError),
    "jpeg of another size than the xml": (lambda r: Image.new("RGB", (40, SIZE)).save(jpeg(r)),
                                          rf"{ID}.jpg: image is 40x48 but .*{ID}.xml says 48x48", SizeMismatchError),
    "xml size wrong": (lambda r: edit_xml(r, "<width>48</width>", "<width>50</width>"),
                       rf"{ID}.jpg: image is 48x48 but .*{ID}.xml says 50x48", SizeMismatchError),
    "malformed xml": (lambda r: xml_path(r).write_text("<annotation><size>"), rf"{ID}.xml: malformed XML", BoxSupError),
    "xml without size": (lambda r: edit_xml(r, "<size><width>48</width><height>48</height><depth>3</depth></size>", ""),
                         rf"{ID}.xml: missing or non-numeric <size>", BoxSupError),
    "non-numeric bndbox": (lambda r: set_objects(r, box("ring", "ten", 2, 20, 20)),
                           rf"{ID}.xml: object 0 \(ring\) has a missing or non-numeric <bndbox>", BoxSupError),
    "unknown class": (lambda r: set_objects(r, box("ring", 1, 1, 9, 9) + box("horse", 1, 1, 9, 9)),
                      rf"{ID}.xml: unknown class 'horse' \(known: star, ring.*in label-id order in .*classes.txt",
                      BoxSupError),
    "missing xml": (lambda r: xml_path(r).unlink(), rf"{ID}.xml: annotation file not found", BoxSupError),
    "mask of another size": (lambda r: save_png(png(r), np.zeros((SIZE, 40), np.uint8), "L"),
                             rf"{ID}.png: mask is 40x48 but the image .*{ID}.jpg is 48x48", SizeMismatchError),
    "corrupt png": (lambda r: png(r).write_bytes(b"\x89PNG\r\n\x1a\n garbage"), rf"{ID}.png: cannot decode mask", BoxSupError),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN_IMAGES))
def test_a_broken_image_is_an_error_alone_and_a_counted_skip_in_the_split(data, case, caplog):
    breakage, pattern, kind = BROKEN_IMAGES[case]
    breakage(data)
    before = snapshot(data)
    ds = dataset(data)
    raises_one_line(lambda: ds.annotation(ID), pattern, kind)
    raises_one_line(lambda: ds.load_annotations(skip_bad=False), pattern, kind)
    with caplog.at_level(logging.WARNING, logger="boxsup.data.voc"):
        kept = ds.load_annotations(skip_bad=True)
    assert [a.image_id for a in kept] == ["synth_000002", "synth_000004"]
    reason = "image left out: size mismatch" if kind is SizeMismatchError else "image left out: bad annotation, image or mask"
    assert ds.skips.counts[reason] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(ID in w for w in warnings) and any("1 of 3 images left out" in w for w in warnings)
    assert snapshot(data) == before


def test_a_good_split_loads_whole_and_without_skips(data):
    ds = dataset(data)
    anns = ds.load_annotations(skip_bad=False)
    assert [a.image_id for a in anns] == ds.ids and all((a.width, a.height) == (SIZE, SIZE) for a in anns)
    assert ds.image_size(ID) == (SIZE, SIZE) and not any(k.startswith("image left out") for k in ds.skips.counts)


def test_a_jpeg_cut_after_its_header_passes_the_header_check_and_fails_decoding(data):
    jpeg(data).write_bytes(jpeg(data).read_bytes()[:-100])
    ds = dataset(data)
    assert ds.annotation(ID).width == SIZE  # the header is whole: sizes agree
    raises_one_line(lambda: ds.image(ID), rf"{ID}.jpg: cannot decode image \(image file is truncated")


MASKS = {
    "rgb mask": (lambda r: save_png(png(r), np.zeros((SIZE, SIZE, 3), np.uint8), "RGB"),
                 rf"{ID}.png: mask must be a palette or greyscale PNG of class ids, got mode RGB", BoxSupError),
    "class ids beyond the classes": (lambda r: save_png(png(r), np.full((SIZE, SIZE), 9, np.uint8), "L"),
                                     rf"{ID}.png: mask holds class ids \[9\] beyond the 5 classes", BoxSupError),
    "mask of another size": (lambda r: save_png(png(r), np.zeros((30, SIZE), np.uint8), "L"),
                             rf"{ID}.png: mask is 48x30 but the image .*{ID}.jpg is 48x48", SizeMismatchError),
    "corrupt png": (lambda r: png(r).write_bytes(png(r).read_bytes()[:60]), rf"{ID}.png: cannot decode mask", BoxSupError),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MASKS))
def test_bad_masks_name_the_png(data, case):
    breakage, pattern, kind = MASKS[case]
    breakage(data)
    before = snapshot(data)
    raises_one_line(lambda: dataset(data).mask(ID), pattern, kind)
    assert snapshot(data) == before


def test_a_box_fully_outside_the_image_is_a_counted_skip(data):
    set_objects(data, box("ring", 1, 1, 10, 10) + box("star", 60, 60, 80, 80))
    ds = dataset(data)
    ann = ds.annotation(ID)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in ann.boxes] == [(0, 0, 10, 10)]
    assert ds.skips.counts["box of zero area or outside the image"] == 1


def test_a_box_partly_outside_the_image_is_clipped_and_counted(data):
    set_objects(data, box("ring", 30, 20, 70, 60))
    ds = dataset(data)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in ds.annotation(ID).boxes] == [(29, 19, SIZE, SIZE)]
    assert ds.skips.counts == {"box clipped to the image": 1}


def test_a_refused_annotation_counts_none_of_its_boxes(data):
    set_objects(data, box("ring", 30, 20, 70, 60) + box("horse", 1, 1, 5, 5))
    ds = dataset(data)
    raises_one_line(lambda: ds.annotation(ID), "unknown class 'horse'")
    assert not ds.skips.counts  # the clipped box of a refused image is not counted


# ---------------------------------------------------------------- split lists and class lists


SPLITS = {
    "missing": (lambda r: (r / "ImageSets" / "Segmentation" / "train.txt").unlink(), r"train.txt: split list not found"),
    "empty": (lambda r: (r / "ImageSets" / "Segmentation" / "train.txt").write_text("\n\n"), r"train.txt: split list is empty"),
    "duplicate ids": (lambda r: (r / "ImageSets" / "Segmentation" / "train.txt").write_text(f"{ID}\nsynth_000002\n{ID}\n"),
                      rf"train.txt: image id '{ID}' is listed twice"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SPLITS))
def test_bad_split_lists_name_the_file(data, case):
    breakage, pattern = SPLITS[case]
    breakage(data)
    before = snapshot(data)
    raises_one_line(lambda: dataset(data), pattern)
    assert snapshot(data) == before


CLASS_FILES = {
    "empty classes.txt": ("auto", lambda r: (r / "classes.txt").write_text("\n"), r"classes.txt: class list is empty"),
    "duplicate in classes.txt": ("auto", lambda r: (r / "classes.txt").write_text("star\nring\nstar\n"),
                                 r"classes.txt: class 'star' is listed twice"),
    "missing class file": ("names.txt", lambda r: None, r"config key data.classes: 'names.txt' is neither 'auto', 'voc' nor an existing file"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CLASS_FILES))
def test_bad_class_lists_name_the_file(data, case):
    spec, breakage, pattern = CLASS_FILES[case]
    breakage(data)
    raises_one_line(lambda: resolve_classes(load_config(None, [f"data.root={data}", f"data.classes={spec}"])), pattern)


def test_a_class_list_in_the_config_with_a_name_twice():
    raises_one_line(lambda: load_config(None, ["data.root=/d", "data.classes=[cat, dog, cat]"]),
                    r"config key data.classes: class 'cat' is listed twice")


# ---------------------------------------------------------------- config values


BAD_VALUES = [
    ("assign.lamda=3", r"unknown config key 'assign.lamda'"),
    ("assign.k=1.5", r"config key assign.k: expected int"),
    ("train.lr=fast", r"config key train.lr: expected a finite float, got 'fast'"),
    ("train.lr=.nan", r"config key train.lr: expected a finite float, got nan"),
    ("train.lr=inf", r"config key train.lr: expected a finite float, got 'inf'"),
    ("eval.scales=[1, .inf]", r"config key eval.scales: expected a list of finite floats"),
    ("eval.scales=1", r"config key eval.scales: expected a list of finite floats"),
    ("assign.lam=-1", r"config key assign.lam: must be >= 0, got -1.0"),
    ("seed=-1", r"config key seed: must be >= 0, got -1"),
    ("train.momentum=1", r"config key train.momentum: must lie in \[0, 1\), got 1.0"),
    ("train.momentum=-0.1", r"config key train.momentum: must lie in \[0, 1\)"),
    ("train.weight_decay=-5e-4", r"config key train.weight_decay: must be >= 0, got -0.0005"),
    ("train.lr_gamma=0", r"config key train.lr_gamma: must lie in \(0, 1\], got 0.0"),
    ("train.lr_gamma=1.5", r"config key train.lr_gamma: must lie in \(0, 1\]"),
    ("eval.scales=[]", r"config key eval.scales: needs at least one value"),
    ("eval.scales=[1, 0]", r"config key eval.scales: must be > 0, got 0.0"),
    ("eval.scales=[-0.5]", r"config key eval.scales: must be > 0, got -0.5"),
    ("ray.num_workers=-1", r"config key ray.num_workers: must be >= 0"),
    ("ray.max_failures=-2", r"config key ray.max_failures: must be >= 0"),
    ("train.num_threads=-1", r"config key train.num_threads: must be >= 0"),
    ("train.loader_workers=-1", r"config key train.loader_workers: must be >= 0"),
    ("data.mask_fraction=1.5", r"config key data.mask_fraction: must lie in \[0, 1\], got 1.5"),
    ("data.mask_fraction=-0.1", r"config key data.mask_fraction: must lie in \[0, 1\]"),
    ("tracking.uri=foo://x", r"config key tracking.uri: 'foo://x' is not an MLflow store URI; use sqlite:///FILE"),
    ("tracking.uri=mlflow.db", r"config key tracking.uri: 'mlflow.db' is not an MLflow store URI"),
    ("assign.k", r"--set 'assign.k': expected KEY=VALUE"),
]


@pytest.mark.parametrize("override, pattern", BAD_VALUES)
def test_bad_config_values_name_the_key(override, pattern):
    error = raises_one_line(lambda: load_config(None, ["data.root=/d", override]), pattern)
    assert str(error).startswith("--set ") and override.split("=")[0] in str(error)  # names the flag and the key


def test_every_numeric_key_has_bounds():
    numeric = [k for k, v in flatten(DEFAULTS).items() if isinstance(v, (int, float, list)) and not isinstance(v, bool)]
    assert sorted(set(numeric) - set(BOUNDS)) == []


@pytest.mark.parametrize("uri", [None, "sqlite:///mlflow.db", "sqlite:////abs/m.db", "file:./mlruns", "file:///tmp/mlruns",
                                 "http://head:5000", "https://mlflow.example.com", "databricks", "databricks://profile",
                                 "postgresql://u@h/db", "postgresql+psycopg2://u@h/db", "mysql://h/db", "mssql://h/db"])
def test_mlflow_store_uris_are_accepted(uri):
    assert load_config(None, ["data.root=/d", f"tracking.uri={'null' if uri is None else uri}"])["tracking"]["uri"] == uri


def test_floats_written_without_a_dot_are_numbers(tmp_path):
    cfg = load_config(None, ["data.root=/d", "train.lr=1e-3", "train.weight_decay=5E-4", "eval.scales=[5e-1, 1, 1.5e0]"])
    assert (cfg["train"]["lr"], cfg["train"]["weight_decay"], cfg["eval"]["scales"]) == (1e-3, 5e-4, [0.5, 1.0, 1.5])
    path = tmp_path / "c.yaml"
    path.write_text("data: {root: /d}\ntrain: {lr: 1e-2, momentum: 9e-1}\n")
    cfg = load_config(path)
    assert (cfg["train"]["lr"], cfg["train"]["momentum"]) == (1e-2, 0.9)


CONFIG_FILES = {
    "malformed yaml": ("data: [unclosed\n", r"c.yaml: not valid YAML"),
    "top level a list": ("- data.root: /d\n", r"c.yaml: top level must be a mapping of config keys"),
    "missing data.root": ("seed: 1\n", r"config key data.root: not set"),
    "bound in a file": ("data: {root: /d}\ntrain: {momentum: 1.2}\n", r"c.yaml: config key train.momentum: must lie in \[0, 1\)"),
    "string that is no number": ("data: {root: /d}\ntrain: {lr: 1e-3x}\n", r"c.yaml: config key train.lr: expected a finite float"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_files_name_the_file(tmp_path, case):
    text, pattern = CONFIG_FILES[case]
    (tmp_path / "c.yaml").write_text(text)
    raises_one_line(lambda: load_config(tmp_path / "c.yaml"), pattern)


def test_a_missing_config_file(tmp_path):
    raises_one_line(lambda: load_config(tmp_path / "none.yaml"), r"none.yaml: config file not found")


# ---------------------------------------------------------------- proposal stores


def store_for(root: Path, method: str = "rectangles", split: str = "train", store: Path | None = None) -> tuple[VOCDataset, ProposalStore]:
    ds = dataset(root, split)
    out = ProposalStore(store or root.parent / "store")
    build_store(ds, out, method, max_candidates=50, progress=False)
    return ds, out


def expected(ds: VOCDataset, method: str = "rectangles", max_candidates: int = 50) -> dict:
    return store_meta(ds, method, max_candidates, 0)


def test_a_store_checks_its_origin_and_passes_when_it_matches(data):
    ds, store = store_for(data)
    store.check_origin(expected(ds))
    assert store.read_meta() == expected(ds) and store.read_meta()["split"] == "train"
    ProposalStore(data.parent / "empty").check_origin(expected(ds))  # nothing there yet: nothing to refuse


ORIGINS = {
    "other method": (lambda ds, root: expected(ds, "ss"), r"store holds 'rectangles' proposals for .* split 'train' .*, not 'ss'"),
    "other candidate cap": (lambda ds, root: expected(ds, max_candidates=2000), r"store holds .*\(max_candidates 50\), not .*\(max_candidates 2000\)"),
    "other split": (lambda ds, root: expected(dataset(root, "val")), r"store holds .* split 'train' .*, not .* split 'val'"),
    "other dataset, same ids": (lambda ds, root: expected(dataset(shutil.copytree(root, root.parent / "copy"))),
                                r"store holds 'rectangles' proposals for .*/data split .*, not 'rectangles' proposals for .*/copy split"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ORIGINS))
def test_a_store_of_another_origin_is_refused_and_left_alone(data, case):
    ds, store = store_for(data)
    want, pattern = ORIGINS[case]
    meta = want(ds, data)
    before = snapshot(data.parent / "store")
    raises_one_line(lambda: store.check_origin(meta), rf"meta.json: {pattern}")
    other = VOCDataset(meta["data_root"], meta["split"], DEMO_CLASSES)
    raises_one_line(lambda: build_store(other, store, meta["method"], meta["max_candidates"], progress=False), "meta.json: store holds")
    assert snapshot(data.parent / "store") == before  # meta.json not overwritten, no pool added


def test_a_complete_store_of_another_method_is_refused_too(data):
    ds, store = store_for(data)  # complete: every training id has its file
    assert set(ds.ids) <= store.stored_ids()
    raises_one_line(lambda: store.check_origin(expected(ds, "ss")), "store holds 'rectangles' proposals")


def test_a_run_checks_the_origin_of_a_complete_store_before_using_it(data):
    from boxsup.platform.launch import ensure_proposals  # imports Ray's modules; starts nothing

    ds, store = store_for(data)
    cfg = load_config(None, [f"data.root={data}", f"proposals.store={store.root}", "proposals.max_candidates=50"])
    before = snapshot(data.parent / "store")
    raises_one_line(lambda: ensure_proposals(cfg, ds, progress=False), "store holds 'rectangles' proposals .*, not 'ss'")
    assert snapshot(data.parent / "store") == before
    cfg["proposals"]["method"] = "rectangles"
    assert ensure_proposals(cfg, ds, progress=False).stored_ids() == set(ds.ids)


def test_pools_without_meta_json_are_not_a_boxsup_store(data):
    ds, store = store_for(data)
    (data.parent / "store" / "meta.json").unlink()
    raises_one_line(lambda: store.check_origin(expected(ds)), r"store/meta.json: no meta.json: not made by boxsup proposals")
    raises_one_line(lambda: build_store(ds, store, "rectangles", 50, progress=False), "no meta.json")


def test_missing_and_corrupt_pool_files_name_the_file(data):
    ds, store = store_for(data)
    (data.parent / "store" / f"{ID}.npz").unlink()
    raises_one_line(lambda: store.load(ID), rf"{ID}.npz: proposal file missing")
    (data.parent / "store" / "synth_000002.npz").write_bytes(b"PK\x03\x04 not a zip")
    raises_one_line(lambda: store.load_atoms("synth_000002"), r"synth_000002.npz: corrupt proposal file")


def test_pools_of_another_size_than_the_image_are_refused(data):
    ds, store = store_for(data)
    pattern = rf"{ID}.npz: proposal atoms are 48x48, the image is 40x48: a store made for another dataset\?"
    raises_one_line(lambda: store.load(ID, expected_shape=(40, 48)), pattern)
    raises_one_line(lambda: store.load_atoms(ID, expected_shape=(40, 48)), pattern)
    assert store.load(ID, expected_shape=(SIZE, SIZE)).atoms.shape == (SIZE, SIZE)
    ann = ds.annotation(ID)
    ann.height = 40  # as if the dataset's image were another one
    raises_one_line(lambda: BoxedPoolCache(store).get(ann), "proposal atoms are 48x48, the image is 40x48")


@pytest.mark.parametrize("breakage, reason", [
    (lambda store: (store / "synth_000002.npz").write_bytes(b"not an npz"), "synth_000002.npz: corrupt proposal file"),
    (lambda store: np.savez_compressed(store / "synth_000002.npz", atoms=np.zeros((40, 48), np.uint16),
                                       indptr=np.array([0, 1]), indices=np.array([0], np.uint16)),
     "synth_000002.npz: proposal atoms are 40x48, the image is 48x48"),
])  # fmt: skip
def test_a_bad_pool_is_a_counted_skip_of_the_label_update(data, tmp_path, breakage, reason):
    from boxsup.assign.assigner import AssignmentSpec
    from boxsup.assign.rule import LabelUpdateRule
    from boxsup.platform.assign_pool import SpecAssigner  # in-process: no Ray started

    ds, store = store_for(data)
    breakage(data.parent / "store")
    spec = AssignmentSpec(voc_data_section(data), DEMO_CLASSES, str(store.root), str(tmp_path / "labels"),
                          LabelUpdateRule.paper(lam=3.0, k=1), 0)
    result = SpecAssigner(spec).assign(0, "synth_000002", None)
    assert result.skipped is not None and reason in result.skipped
    assert not (tmp_path / "labels").exists() or not any((tmp_path / "labels").rglob("synth_000002*"))


def test_building_a_store_skips_and_counts_an_unreadable_image(data):
    jpeg(data).write_bytes(b"not a jpeg")
    ds = dataset(data)
    report = build_store(ds, ProposalStore(data.parent / "store"), "rectangles", 50, progress=False)
    assert (report.made, dict(report.skipped)) == (2, {"unreadable image or annotation": 1})
    assert ProposalStore(data.parent / "store").stored_ids() == {"synth_000002", "synth_000004"}


# ---------------------------------------------------------------- checkpoints for `boxsup eval`


def save_checkpoint(path: Path, root: Path, classes: tuple[str, ...] = DEMO_CLASSES, backbone: str = "small",
                    model: torch.nn.Module | None = None) -> Path:
    cfg = load_config(None, [f"data.root={root}", f"model.backbone={backbone}", "model.weights=none"])
    model = model or build_model("small", len(classes) + 1, "none")
    torch.save({"model": model.state_dict(), "config": cfg, "classes": list(classes)}, path)
    return path


def evaluate_checkpoint(path: Path, root: Path, split: str):
    """Scores of a saved model on ``root``'s ``split``, and its class names: the checkpoint opened as
    ``boxsup eval`` opens it (classes checked before the network is built)."""
    state = read_checkpoint(path)
    loaded = checkpoint_model(state, str(path), EvalData(root, split), CRFParams.of_config(state["config"]))
    return evaluate(loaded.model, loaded.dataset, loaded.device, progress=False).compute(), loaded.class_names


class Marker:
    """Unpickling this runs ``open(path, 'w')``: what a crafted checkpoint could do with any callable."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_of_boxsup_train_evaluates(data, tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", data)
    assert set(load_checkpoint(path)) == {"model", "config", "classes"}
    scores, names = evaluate_checkpoint(path, data, "val")
    assert names == ["background", *DEMO_CLASSES] and 0 <= scores.pixel_accuracy <= 1


def test_a_crafted_checkpoint_is_refused_without_running_its_code(data, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model": Marker(marker), "config": {}, "classes": ["a"]}, path)
    raises_one_line(lambda: load_checkpoint(path), r"evil.pt: holds objects beyond tensors and plain types; refused")
    err = cli_error(capsys, ["eval", "--checkpoint", str(path), "--data", str(data)])
    assert "evil.pt: holds objects beyond tensors" in err
    plain = tmp_path / "plain.pkl"  # not even a torch file: a bare pickle
    plain.write_bytes(pickle.dumps(Marker(marker), protocol=2))
    raises_one_line(lambda: load_checkpoint(plain), r"plain.pkl: holds objects beyond tensors")
    assert not marker.exists()


CHECKPOINTS = {
    "plain state dict": (lambda p, root: torch.save(build_model("small", 6).state_dict(), p),
                         r"ckpt.pt: not a boxsup checkpoint: it must hold 'model' \(a state dict\), 'classes' \(names\) and 'config'"),
    "truncated": (lambda p, root: p.write_bytes(save_checkpoint(p, root).read_bytes()[:5000]),
                  r"ckpt.pt: cannot read checkpoint \(\w+: damaged, truncated or not a torch file\)"),
    "empty file": (lambda p, root: p.write_bytes(b""), r"ckpt.pt: cannot read checkpoint"),
    "missing": (lambda p, root: None, r"ckpt.pt: checkpoint not found"),
    "a directory": (lambda p, root: p.mkdir(), r"ckpt.pt: checkpoint not found"),
    "other classes than classes.txt": (lambda p, root: save_checkpoint(p, root, ("cat", "dog")),
                                       r"ckpt.pt: the model was trained for classes cat, dog but .*classes.txt lists star, ring"),
    "weights of another backbone": (lambda p, root: save_checkpoint(p, root, backbone="vgg16_largefov"),
                                    r"ckpt.pt: its weights do not fit a vgg16_largefov model for 5 classes: \d+ missing or unexpected keys"),
    "classifier for another class count": (lambda p, root: save_checkpoint(p, root, model=build_model("small", 3)),
                                           r"ckpt.pt: its weights do not fit a small model for 5 classes: classifier.weight has shape"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_bad_checkpoints_are_one_line_errors(data, tmp_path, case, capsys):
    make, pattern = CHECKPOINTS[case]
    path = tmp_path / "ckpt.pt"
    make(path, data)
    before = snapshot(data)
    raises_one_line(lambda: evaluate_checkpoint(path, data, "val"), pattern)
    err = cli_error(capsys, ["eval", "--checkpoint", str(path), "--data", str(data)])
    assert "ckpt.pt" in err
    assert snapshot(data) == before


def test_evaluate_refuses_a_prediction_of_another_size_than_the_mask(data):
    class CroppedMasks(VOCDataset):
        def mask(self, image_id: str) -> np.ndarray | None:
            mask = super().mask(image_id)
            return None if mask is None else mask[:, :40]

    ds = CroppedMasks(data, "val", DEMO_CLASSES)
    model = build_model("small", ds.num_classes, "none")
    raises_one_line(lambda: evaluate(model, ds, torch.device("cpu"), progress=False),
                    r"synth_000003.png: mask is 40x48 but the image \(and its prediction\) is 48x48")


def test_a_mask_of_another_size_is_named_in_readers_without_mask_files(data, tmp_path):
    """Every reader says where an image's mask comes from (``mask_location``): COCO paints it from its JSON,
    and a prefixed source asks the reader it wraps (evaluate asked VOC's ``mask_path``: AttributeError)."""
    from boxsup.data.coco import CocoDataset
    from boxsup.data.dataset import PrefixedDataset
    from boxsup.data.to_coco import write_coco_copy

    class CroppedCoco(CocoDataset):
        def mask(self, image_id: str) -> np.ndarray | None:
            mask = super().mask(image_id)
            return None if mask is None else mask[:, :40]

    write_coco_copy(data, tmp_path / "coco", split_names=("val",), classes=DEMO_CLASSES)
    coco = CroppedCoco(tmp_path / "coco" / "annotations" / "instances_val.json", tmp_path / "coco" / "val", DEMO_CLASSES)
    model = build_model("small", coco.num_classes, "none")
    raises_one_line(lambda: evaluate(model, PrefixedDataset(coco, "c_"), torch.device("cpu"), progress=False),
                    r"instances_val.json \(image id 1\): mask is 40x48 but the image \(and its prediction\) is 48x48")


# ---------------------------------------------------------------- CLI arguments


@pytest.mark.parametrize("scales, shown", [(["0"], "0"), (["1", "-0.5"], "-0.5"), (["nan"], "nan")])
def test_eval_scales_must_be_positive(data, tmp_path, capsys, scales, shown):
    path = save_checkpoint(tmp_path / "checkpoint.pt", data)
    err = cli_error(capsys, ["eval", "--checkpoint", str(path), "--data", str(data), "--scales", *scales])
    assert f"--scales: every scale must be a finite number > 0, got {shown}" in err


@pytest.fixture
def workdir(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory holding one valid run config (``ok.yaml``): where runs and mlflow.db would go."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "ok.yaml").write_text(f"data: {{root: {data}}}\nmodel: {{backbone: small, weights: none}}\n"
                                  f"output: {{dir: {work / 'runs'}}}\ntracking: {{uri: 'sqlite:///{work / 'mlflow.db'}'}}\n")
    monkeypatch.chdir(work)
    return work


CLI_CASES = {
    "--set without '='": (["train", "--config", "ok.yaml", "--set", "assign.k"], "--set 'assign.k': expected KEY=VALUE"),
    "second of two pairs after one --set": (["train", "--config", "ok.yaml", "--set", "assign.k=2", "seed=-1"],
                                            "--set seed=-1: config key seed: must be >= 0"),
    "repeated --set": (["train", "--config", "ok.yaml", "--set", "assign.k=2", "--set", "train.momentum=1"],
                       "--set train.momentum=1: config key train.momentum"),
    "--resume with --config": (["train", "--resume", "runs/r", "--config", "ok.yaml"], "--resume continues a run with its own config"),
    "--resume with --set of a fixed key": (["train", "--resume", "runs/r", "--set", "seed=1"],
                                           "--set seed=1: seed cannot change when a run is resumed"),
    "neither --config nor --resume": (["train"], "give --config FILE"),
    "missing config file": (["train", "--config", "nope.yaml"], "nope.yaml: config file not found"),
    "bad tracking uri": (["train", "--config", "ok.yaml", "--set", "tracking.uri=foo://x"], "config key tracking.uri"),
    "sweep with a bad --set": (["sweep", "--space", "space.yaml", "--config", "ok.yaml", "--set", "eval.scales=[]"],
                               "config key eval.scales: needs at least one value"),
    "demo with a bad --set": (["demo", "--config", "ok.yaml", "--data", "DATA", "--set", "assign.lam=-3"],
                              "config key assign.lam: must be >= 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_mistakes_are_one_line_and_write_nothing(workdir, data, capsys, case):
    argv, words = CLI_CASES[case]
    argv = [str(data) if a == "DATA" else a for a in argv]
    before, data_before = snapshot(workdir), snapshot(data)
    assert words in cli_error(capsys, argv)
    assert snapshot(workdir) == before and snapshot(data) == data_before  # no run directory, no mlflow.db, no demo data


@pytest.mark.parametrize("command", [["train", "--config", "c.yaml"], ["sweep", "--space", "s.yaml", "--config", "c.yaml"],
                                     ["demo"]])
def test_set_takes_several_pairs_after_one_flag_and_repeated_flags(command):
    args = build_parser().parse_args([*command, "--set", "a=1", "b=2", "--set", "c=3"])
    assert args.set == ["a=1", "b=2", "c=3"]
    assert build_parser().parse_args(command).set == []


# ---------------------------------------------------------------- whole `boxsup train` runs (in-process, no Ray)


def train_config(tiny_config, data: Path, **overrides) -> Path:
    return tiny_config(data, ray__num_workers=0, train__epochs=1, **overrides)


def test_train_refuses_a_wrong_size_validation_mask_before_any_run_starts(data, tmp_path, tiny_config, capsys):
    val_id = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    Image.fromarray(np.zeros((SIZE + 4, SIZE), np.uint8)).save(data / "SegmentationClass" / f"{val_id}.png")
    assert main(["train", "--config", str(train_config(tiny_config, data))]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{val_id}.png: mask is {SIZE}x{SIZE + 4}" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()  # no run, no MLflow run


def test_train_refuses_a_store_of_another_method_before_any_run_starts(data, tmp_path, tiny_config, capsys):
    dataset = VOCDataset(data, "train", DEMO_CLASSES)
    store = ProposalStore(tmp_path / "store")
    build_store(dataset, store, "rectangles", max_candidates=200, progress=False)
    before = snapshot(tmp_path / "store")
    config = train_config(tiny_config, data, proposals__store=str(tmp_path / "store"))
    assert main(["train", "--config", str(config)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "meta.json: store holds" in err and "'rectangles'" in err
    assert snapshot(tmp_path / "store") == before
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_train_leaves_out_a_training_image_whose_size_is_not_its_xmls(data, tmp_path, tiny_config, caplog):
    Image.new("RGB", (SIZE + 8, SIZE)).save(data / "JPEGImages" / f"{ID}.jpg")
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--config", str(train_config(tiny_config, data))]) == 0
    assert f"{ID}.jpg: image is {SIZE + 8}x{SIZE}" in caplog.text and "1 of 3 images left out" in caplog.text
    labelled = sorted(p.stem for p in (tmp_path / "runs" / "r" / "labels" / "round_000").glob("*.png"))
    assert ID not in labelled and len(labelled) == 2
