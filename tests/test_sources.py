"""data.sources: several readers in one run, per-source supervision, unique ids, one-line config errors,
`boxsup data check`, and the same labels from a VOC set and from its COCO copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.annotations import Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.sources import build_datasets, source_specs, training_annotations
from boxsup.data.synth import generate_dataset
from boxsup.data.to_coco import write_coco_copy
from boxsup.data.voc import write_split
from boxsup.errors import BoxSupError
from boxsup.platform.launch import run_boxsup


@pytest.fixture(scope="module")
def voc_and_coco(tmp_path_factory):
    """A small demo-style VOC set, lists splitting its training ids in two, and COCO copies."""
    root = tmp_path_factory.mktemp("sources")
    voc = root / "voc"
    generate_dataset(voc, n_images=16, size=64, seed=3)
    train = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    write_split(voc, "train_a", train[: len(train) // 2])
    write_split(voc, "train_b", train[len(train) // 2 :])
    write_coco_copy(voc, root / "coco", ["train", "val", "train_b"])
    return voc, root / "coco", train


def config_with(tmp_path: Path, data: dict, **sections) -> dict:
    """A tiny in-process run's config (64 px, small FCN) with the given data section."""
    raw = {
        "seed": 1,
        "data": {"crop_size": 64, **data},
        "proposals": {"method": "ss", "max_candidates": 200},
        "model": {"backbone": "small", "weights": "none"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "lr_step": 2, "num_threads": 1},
        "ray": {"num_workers": 0},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "sources", "run_name": "r"},
        "output": {"dir": str(tmp_path / "runs")},
        **sections,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def voc_source(voc: Path, split: str, supervision: str = "box", **extra) -> dict:
    return {"name": f"voc_{split}", "format": "voc", "root": str(voc), "split": split, "supervision": supervision, **extra}


def coco_source(coco: Path, split: str, supervision: str = "box", **extra) -> dict:
    return {"name": f"coco_{split}", "format": "coco", "root": str(coco), "supervision": supervision,
            "annotations": f"annotations/instances_{split}.json", "images": split, **extra}


def label_maps(run_dir: Path) -> dict[str, bytes]:
    """Every label map of every round, by its path under the run's label store."""
    labels = run_dir / "labels"
    return {str(p.relative_to(labels)): p.read_bytes() for p in sorted(labels.rglob("*.png"))}


def test_a_run_on_the_coco_copy_gives_the_same_label_maps_as_on_the_voc_set(voc_and_coco, tmp_path):
    voc, coco, _ = voc_and_coco
    val = voc_source(voc, "val", "mask")
    classes = str(voc / "classes.txt")
    runs = {}
    for name, source in (("voc", voc_source(voc, "train")), ("coco", coco_source(coco, "train"))):
        cfg = config_with(tmp_path / name, {"classes": classes, "sources": [source], "val": val})
        runs[name] = run_boxsup(cfg, progress=False)
    voc_maps, coco_maps = label_maps(Path(runs["voc"].run_dir)), label_maps(Path(runs["coco"].run_dir))
    assert len(voc_maps) == 2 * 12  # two rounds (E_o alone, then with the network) of the 12 training images
    assert voc_maps == coco_maps
    assert runs["voc"].val_miou == runs["coco"].val_miou


def test_a_mixed_run_trains_on_voc_masks_and_on_coco_boxes(voc_and_coco, tmp_path):
    voc, coco, train = voc_and_coco
    sources = [voc_source(voc, "train_a", "mask"), coco_source(coco, "train_b", "box")]
    cfg = config_with(tmp_path, {"classes": str(voc / "classes.txt"), "sources": sources,
                                 "val": voc_source(voc, "val", "mask")})
    result = run_boxsup(cfg, progress=False)
    assert np.isfinite(result.val_miou)
    labels = LabelStore(Path(result.run_dir) / "labels")
    boxed = train[len(train) // 2 :]
    assert [i for i in train if labels.has(0, i)] == boxed  # only the COCO source's box images get label maps


def test_supervision_is_set_per_source(voc_and_coco, tmp_path):
    voc, coco, train = voc_and_coco
    first_a = train[0]
    (voc / "masked.txt").write_text(first_a + "\n")
    sources = [voc_source(voc, "train_a", "semi", mask_list="masked.txt"), coco_source(coco, "train_b", "mask")]
    cfg = config_with(tmp_path, {"classes": str(voc / "classes.txt"), "sources": sources,
                                 "val": voc_source(voc, "val", "mask")})
    train_set, _ = build_datasets(cfg)
    kinds = {a.image_id: a.supervision for a in training_annotations(cfg, train_set)}
    half = len(train) // 2
    expected = {i: Supervision.BOX for i in train[:half]} | {first_a: Supervision.MASK} | \
        {i: Supervision.MASK for i in train[half:]}
    assert kinds == expected


def test_ids_must_be_unique_across_sources_and_a_prefix_makes_them_so(voc_and_coco, tmp_path):
    voc, coco, train = voc_and_coco
    data = {"classes": str(voc / "classes.txt"), "val": voc_source(voc, "val", "mask")}
    clash = config_with(tmp_path, data | {"sources": [voc_source(voc, "train"), coco_source(coco, "train")]})
    with pytest.raises(BoxSupError, match=r"instances_train\.json: image id '\w+' is also in source 'voc_train'"):
        build_datasets(clash)
    prefixed = config_with(tmp_path, data | {"sources": [voc_source(voc, "train"), coco_source(coco, "train", prefix="c_")]})
    train_set, _ = build_datasets(prefixed)
    assert train_set.ids == train + [f"c_{i}" for i in train]
    ann = train_set.annotation(f"c_{train[0]}")
    assert ann.image_id == f"c_{train[0]}" and ann.boxes == train_set.annotation(train[0]).boxes
    assert np.array_equal(train_set.image(f"c_{train[0]}"), train_set.image(train[0]))


def test_voc2007_main_lists_give_box_only_images(tmp_path):
    voc07 = tmp_path / "VOC2007"
    generate_dataset(voc07, n_images=8, size=48, seed=5)
    ids = (voc07 / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    shutil.rmtree(voc07 / "SegmentationClass")
    (voc07 / "ImageSets" / "Main").mkdir()
    (voc07 / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    for f in (voc07 / "ImageSets" / "Segmentation").iterdir():
        f.unlink()
    cfg = config_with(tmp_path, {"classes": str(voc07 / "classes.txt"),
                                 "sources": [{"name": "v07", "format": "voc", "root": str(voc07), "split": "trainval",
                                              "supervision": "box"}],
                                 "val": {"name": "v", "format": "voc", "root": str(voc07), "split": "trainval"}})
    train_set, _ = build_datasets(cfg)
    anns = training_annotations(cfg, train_set)
    assert [a.image_id for a in anns] == ids
    assert all(not a.has_mask and a.supervision == Supervision.BOX and a.boxes for a in anns)


def test_class_map_drops_a_class_and_counts_it(voc_and_coco, tmp_path):
    voc, _, train = voc_and_coco
    names = (voc / "classes.txt").read_text().split()
    source = voc_source(voc, "train", class_map={names[0]: None})
    cfg = config_with(tmp_path, {"classes": str(voc / "classes.txt"), "sources": [source],
                                 "val": voc_source(voc, "val", "mask")})
    train_set, _ = build_datasets(cfg)
    anns = train_set.load_annotations(skip_bad=False)
    assert all(b.label != 1 for a in anns for b in a.boxes)
    dropped = train_set.sources[0].skips.counts[f"class {names[0]!r} dropped by class_map"]
    plain = config_with(tmp_path / "plain", {"classes": str(voc / "classes.txt"), "sources": [voc_source(voc, "train")],
                                             "val": voc_source(voc, "val", "mask")})
    plain_boxes = [b for a in build_datasets(plain)[0].load_annotations(skip_bad=False) for b in a.boxes]
    assert dropped == sum(b.label == 1 for b in plain_boxes) > 0


@pytest.mark.parametrize("data, message", [
    ({"sources": [{"name": "a", "format": "pascal", "root": "."}]}, r"data.sources\[0\].format: 'pascal' is not one of"),
    ({"sources": [{"name": "a", "format": "voc", "root": "."}]}, r"data.sources\[0\].split: format voc takes exactly one"),
    ({"sources": [{"name": "a", "format": "coco", "root": ".", "images": "x"}]}, r"data.sources\[0\].annotations: required"),
    ({"sources": [{"name": "a", "format": "voc", "root": ".", "split": "t", "color": 1}]}, r"data.sources\[0\].color: unknown key"),
    ({"sources": [{"name": "a", "format": "voc", "root": ".", "split": "t", "supervision": "boxes"}]},
     r"data.sources\[0\].supervision: 'boxes' is not one of"),
    ({"sources": [{"name": "a", "format": "voc", "root": ".", "split": "t"}] * 2}, r"two sources are named 'a'"),
    ({"sources": [{"name": "a", "format": "voc", "root": ".", "split": "t"}]}, r"config key data.val: not set"),
    ({"sources": [{"name": "a", "format": "voc", "root": ".", "split": "t"}], "val": {"name": "v", "format": "voc", "root": "."},
      "supervision": "semi"}, r"data.supervision: not used with data.sources"),
    ({"sources": []}, r"data.sources: expected a non-empty list"),
])  # fmt: skip
def test_a_bad_sources_section_is_one_line(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    with pytest.raises(BoxSupError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_data_root_is_the_one_source_shorthand(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "somewhere/VOC", "supervision": "semi", "mask_fraction": 0.25}}))
    train, val = source_specs(load_config(path)["data"])
    assert [(s.format, s.root, s.split, s.supervision, s.mask_fraction) for s in train] == [("voc", "somewhere/VOC", "train", "semi", 0.25)]
    assert (val.format, val.split, val.supervision) == ("voc", "val", "mask")


def test_data_check_counts_each_problem_with_an_example(voc_and_coco, tmp_path, capsys):
    voc, coco, train = voc_and_coco
    broken = tmp_path / "voc"
    shutil.copytree(voc, broken)
    (broken / "JPEGImages" / f"{train[0]}.jpg").write_bytes(b"not a jpeg")
    xml = broken / "Annotations" / f"{train[1]}.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>zebra", 1))
    config = tmp_path / "check.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "classes": str(voc / "classes.txt"),
        "sources": [voc_source(broken, "train"), coco_source(coco, "train", prefix="c_")],
        "val": voc_source(voc, "val", "mask")}}))
    assert main(["data", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "| voc_train | train | 12 | 10 | 10 |" in out
    assert "| coco_train | train | 12 | 12 | 12 |" in out
    assert f"voc_train: 1 x cannot decode image; e.g. {broken / 'JPEGImages' / train[0]}.jpg" in out
    assert "voc_train: 1 x unknown class 'zebra" in out and str(xml) in out


def test_one_field_of_a_source_can_be_set_from_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": [{"name": "a", "format": "voc", "root": "x", "split": "t"}],
                                             "val": {"name": "v", "format": "voc", "root": "x", "split": "val"}}}))
    cfg = load_config(path, ["data.sources[0].root=/mnt/VOC", "data.val.split=test"])
    train, val = source_specs(cfg["data"])
    assert (train[0].root, val.split, val.root) == ("/mnt/VOC", "test", "x")
    with pytest.raises(BoxSupError, match=r"data.sources has no source 1"):
        load_config(path, ["data.sources[1].root=/mnt/VOC"])
