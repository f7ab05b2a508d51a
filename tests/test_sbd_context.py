"""SBD and PASCAL-CONTEXT readers on small fixtures written in the real formats, including broken ones.

SBD's ``cls/`` and ``inst/`` files are written with ``scipy.io.savemat`` in the released MATLAB
struct layout (``GTcls``: Segmentation, Boundaries, CategoriesPresent; ``GTinst``: Segmentation,
Boundaries, Categories); Context masks are 8-bit PNGs as mmsegmentation's converter writes them.
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from boxsup.data.annotations import Box
from boxsup.data.context import CONTEXT_CLASSES, ContextDataset
from boxsup.data.images import SizeMismatchError
from boxsup.data.mask_boxes import boxes_from_class_mask, boxes_from_instances
from boxsup.data.sbd import SBDDataset
from boxsup.data.sources import SourceSpec, open_source
from boxsup.data.voc import VOC_CLASSES
from boxsup.errors import BoxSupError

H, W = 20, 30
PERSON, CAT, DOG = 15, 8, 12  # VOC / SBD class ids
CTX = {name: i + 1 for i, name in enumerate(CONTEXT_CLASSES)}


def one_line_naming(exc_info, path: Path) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    assert str(path) in text
    return text


# ---------------------------------------------------------------- boxes from masks


def test_boxes_from_instances_tight_in_id_order():
    inst = np.zeros((6, 8), np.uint8)
    inst[1:3, 2:5] = 2
    inst[4, 0] = 1
    inst[5, 7] = 255  # void
    assert boxes_from_instances(inst, [3, 7]) == [Box(0, 4, 1, 5, 3), Box(2, 1, 5, 3, 7)]
    assert boxes_from_instances(inst, [None, 7]) == [Box(2, 1, 5, 3, 7)]  # dropped class: no box
    assert boxes_from_instances(inst, [3, 7, 9]) == [Box(0, 4, 1, 5, 3), Box(2, 1, 5, 3, 7)]  # listed, absent
    with pytest.raises(ValueError, match=r"\[2\]"):
        boxes_from_instances(inst, [3])


def test_boxes_from_class_mask_eight_connected_and_min_pixels():
    mask = np.zeros((6, 8), np.uint8)
    mask[0, 0] = mask[1, 1] = 4  # diagonal neighbours: one region
    mask[4:6, 5:8] = 4
    mask[3, 3] = 2
    mask[5, 0] = 255
    assert boxes_from_class_mask(mask) == [Box(3, 3, 4, 4, 2), Box(0, 0, 2, 2, 4), Box(5, 4, 8, 6, 4)]
    assert boxes_from_class_mask(mask, min_pixels=3) == [Box(5, 4, 8, 6, 4)]
    assert boxes_from_class_mask(mask, ignore=(0, 255, 4)) == [Box(3, 3, 4, 4, 2)]


# ---------------------------------------------------------------- SBD fixtures


def boundaries(n: int) -> np.ndarray:
    """An n x 1 MATLAB cell of sparse boundary matrices, as the released files hold."""
    cell = np.empty((n, 1), dtype=object)
    for i in range(n):
        cell[i, 0] = scipy.sparse.csc_matrix((H, W), dtype=np.uint8)
    return cell


def write_cls(root: Path, image_id: str, seg: np.ndarray) -> Path:
    present = np.array([[c] for c in np.unique(seg) if 0 < c < 255], dtype=np.uint8)
    path = root / "cls" / f"{image_id}.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg.astype(np.uint8), "Boundaries": boundaries(20),
                                      "CategoriesPresent": present}})
    return path


def write_inst(root: Path, image_id: str, inst: np.ndarray, categories: list[int]) -> Path:
    path = root / "inst" / f"{image_id}.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTinst": {"Segmentation": inst.astype(np.uint8), "Boundaries": boundaries(len(categories)),
                                       "Categories": np.array(categories, np.uint8).reshape(-1, 1)}})
    return path


def write_jpeg(path: Path, size=(W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG")


def sbd_scene() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Two touching persons, a cat, a dog: instance map, class map, instance categories."""
    inst = np.zeros((H, W), np.uint8)
    inst[2:10, 3:8] = 1  # person
    inst[4:12, 8:14] = 2  # person, touching the first
    inst[13:18, 20:27] = 3  # cat
    inst[15:17, 2:4] = 4  # dog
    categories = [PERSON, PERSON, CAT, DOG]
    seg = np.zeros((H, W), np.uint8)
    for i, c in enumerate(categories, start=1):
        seg[inst == i] = c
    return inst, seg, categories


INSTANCE_BOXES = [Box(3, 2, 8, 10, PERSON), Box(8, 4, 14, 12, PERSON), Box(20, 13, 27, 18, CAT), Box(2, 15, 4, 17, DOG)]
REGION_BOXES = [Box(20, 13, 27, 18, CAT), Box(2, 15, 4, 17, DOG), Box(3, 2, 14, 12, PERSON)]  # by class, persons merged


@pytest.fixture
def sbd_root(tmp_path) -> Path:
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    inst, seg, categories = sbd_scene()
    for image_id in ("2008_000001", "2008_000002", "2008_000003"):
        write_jpeg(root / "img" / f"{image_id}.jpg")
        write_cls(root, image_id, seg)
    write_inst(root, "2008_000001", inst, categories)
    write_inst(root, "2008_000002", inst, categories)  # 2008_000003 has no inst/ file
    (root / "train.txt").write_text("2008_000001\n2008_000002\n")
    (root / "val.txt").write_text("2008_000003\n")
    return root


def test_fixture_reads_back_like_the_released_files(sbd_root):
    """loadmat gives the 1x1 struct layout of the real files (torchvision's access path works)."""
    cls = scipy.io.loadmat(sbd_root / "cls" / "2008_000001.mat")
    assert cls["GTcls"].shape == (1, 1)
    assert set(cls["GTcls"].dtype.names) == {"Segmentation", "Boundaries", "CategoriesPresent"}
    assert cls["GTcls"][0]["Segmentation"][0].shape == (H, W)
    inst = scipy.io.loadmat(sbd_root / "inst" / "2008_000001.mat")
    assert inst["GTinst"][0, 0]["Categories"].shape == (4, 1)
    assert inst["GTinst"][0, 0]["Boundaries"].shape == (4, 1)


def test_sbd_ids_boxes_and_masks(sbd_root):
    ds = SBDDataset(sbd_root, VOC_CLASSES, split="train")
    assert ds.ids == ["2008_000001", "2008_000002"]
    assert ds.list_file == sbd_root / "train.txt"
    assert ds.origin() == {"data_root": str(sbd_root.resolve()), "split": "train"}
    ann = ds.annotation("2008_000001")
    assert (ann.width, ann.height, ann.has_mask) == (W, H, True)
    assert ann.boxes == INSTANCE_BOXES
    _, seg, _ = sbd_scene()
    np.testing.assert_array_equal(ds.mask("2008_000001"), seg)
    assert ds.image("2008_000001").shape == (H, W, 3)
    assert not ds.skips.counts


def test_sbd_boxes_from_class_mask_without_inst_file(sbd_root):
    ds = SBDDataset(sbd_root, VOC_CLASSES, split="val")
    assert ds.annotation("2008_000003").boxes == REGION_BOXES
    assert ds.skips.counts["boxes from class-mask components"] == 1
    assert "2008_000003.mat" in ds.skips.examples["boxes from class-mask components"]


def test_sbd_list_file_with_deeplab_pairs(sbd_root, tmp_path):
    listing = tmp_path / "mine.txt"
    listing.write_text("/img/2008_000002.jpg /cls/2008_000002.png\n/img/2008_000003.jpg /cls/2008_000003.png\n")
    ds = SBDDataset(sbd_root, VOC_CLASSES, list_file=listing)
    assert ds.ids == ["2008_000002", "2008_000003"]
    assert ds.split == "mine"


def test_sbd_class_mapping_drops_and_voids(sbd_root):
    ds = SBDDataset(sbd_root, ("cat", "person"), split="train", class_map={"dog": "background"})
    ann = ds.annotation("2008_000001")
    assert ann.boxes == [Box(3, 2, 8, 10, 2), Box(8, 4, 14, 12, 2), Box(20, 13, 27, 18, 1)]
    assert ds.mapping.dropped == {"dog": 1}
    assert ds.skips.counts["class 'dog' mapped to background: box dropped"] == 1
    mask = ds.mask("2008_000001")
    inst, _, _ = sbd_scene()
    assert set(np.unique(mask[inst == 4])) == {0}  # dog mapped to background
    assert set(np.unique(mask[inst == 3])) == {1}
    assert set(np.unique(mask[(inst == 1) | (inst == 2)])) == {2}

    only_person = SBDDataset(sbd_root, ("person",), split="train")
    assert only_person.annotation("2008_000001").boxes == [Box(3, 2, 8, 10, 1), Box(8, 4, 14, 12, 1)]
    assert only_person.mapping.dropped == {"cat": 1, "dog": 1}
    assert only_person.skips.counts["class 'cat' not a class of this run: box dropped"] == 1
    mask = only_person.mask("2008_000001")
    assert set(np.unique(mask[(inst == 3) | (inst == 4)])) == {255}  # dropped classes: void
    assert set(np.unique(mask[inst == 0])) == {0}


def test_sbd_class_map_and_run_classes_checked(sbd_root):
    with pytest.raises(BoxSupError, match="'doggo' is not an SBD class"):
        SBDDataset(sbd_root, VOC_CLASSES, split="train", class_map={"doggo": None})
    with pytest.raises(BoxSupError, match="none of SBD's classes"):
        SBDDataset(sbd_root, ("sky", "road"), split="train")
    with pytest.raises(BoxSupError, match="split list not found") as exc:
        SBDDataset(sbd_root, VOC_CLASSES, split="trainaug")
    one_line_naming(exc, sbd_root / "trainaug.txt")


def test_sbd_squeezed_layouts_read_too(sbd_root):
    """A single instance (Categories a 1x1 matrix) and a double-typed Segmentation read as usual."""
    inst = np.zeros((H, W), np.uint8)
    inst[5:7, 1:9] = 1
    write_inst(sbd_root, "2008_000001", inst, [CAT])
    path = sbd_root / "cls" / "2008_000001.mat"
    scipy.io.savemat(path, {"GTcls": {"Segmentation": (inst * CAT).astype(np.float64), "Boundaries": boundaries(20),
                                      "CategoriesPresent": np.array([[CAT]], np.uint8)}})
    ds = SBDDataset(sbd_root, VOC_CLASSES, split="train")
    assert ds.annotation("2008_000001").boxes == [Box(1, 5, 9, 7, CAT)]
    assert ds.mask("2008_000001").dtype == np.uint8


def test_sbd_through_open_source(sbd_root):
    ds = open_source(SourceSpec("sbd", "sbd", str(sbd_root), split="train", prefix="sbd/"), VOC_CLASSES)
    assert ds.ids == ["sbd/2008_000001", "sbd/2008_000002"]
    assert ds.annotation("sbd/2008_000002").boxes == INSTANCE_BOXES


@pytest.mark.parametrize("case, expected", [
    ("wrong fields", "GTcls lacks field(s) Segmentation"),
    ("wrong struct", "no GTcls struct"),
    ("not a struct", "not a 1x1 MATLAB struct"),
    ("garbage", "cannot read .mat file"),
    ("missing", ".mat file not found"),
    ("class out of range", "class ids [21] outside 0..20"),
    ("wrong size", "mask is 29x20 but the image"),
])  # fmt: skip
def test_sbd_bad_cls(sbd_root, case, expected):
    path = sbd_root / "cls" / "2008_000001.mat"
    _, seg, _ = sbd_scene()
    if case == "wrong fields":
        scipy.io.savemat(path, {"GTcls": {"Seg": seg, "Boundaries": boundaries(20)}})
    elif case == "wrong struct":
        scipy.io.savemat(path, {"GTinst": {"Segmentation": seg}})
    elif case == "not a struct":
        scipy.io.savemat(path, {"GTcls": seg})
    elif case == "garbage":
        path.write_bytes(b"not a MATLAB file at all" * 10)
    elif case == "missing":
        path.unlink()
    elif case == "class out of range":
        seg[0, 0] = 21
        write_cls(sbd_root, "2008_000001", seg)
    elif case == "wrong size":
        write_cls(sbd_root, "2008_000001", seg[:, :29])
    ds = SBDDataset(sbd_root, VOC_CLASSES, split="train")
    for call in (ds.annotation, ds.mask):
        with pytest.raises(BoxSupError) as exc:
            call("2008_000001")
        assert expected in one_line_naming(exc, path)
        assert isinstance(exc.value, SizeMismatchError) == (case == "wrong size")
    kept = ds.load_annotations(skip_bad=True)
    assert [a.image_id for a in kept] == ["2008_000002"]
    assert sum(ds.skips.counts.values()) == 1


@pytest.mark.parametrize("case, expected", [
    ("no categories", "GTinst lacks field(s) Categories"),
    ("category out of range", "GTinst.Categories holds class ids [25] outside 1..20"),
    ("instance beyond categories", "instance ids [4] beyond the 3 instances listed"),
    ("wrong size", "mask is 30x19 but the image"),
])  # fmt: skip
def test_sbd_bad_inst(sbd_root, case, expected):
    path = sbd_root / "inst" / "2008_000002.mat"
    inst, _, categories = sbd_scene()
    if case == "no categories":
        scipy.io.savemat(path, {"GTinst": {"Segmentation": inst, "Boundaries": boundaries(4)}})
    elif case == "category out of range":
        write_inst(sbd_root, "2008_000002", inst, [PERSON, PERSON, 25, DOG])
    elif case == "instance beyond categories":
        write_inst(sbd_root, "2008_000002", inst, categories[:3])
    elif case == "wrong size":
        write_inst(sbd_root, "2008_000002", inst[:19], categories)
    ds = SBDDataset(sbd_root, VOC_CLASSES, split="train")
    with pytest.raises(BoxSupError) as exc:
        ds.annotation("2008_000002")
    assert expected in one_line_naming(exc, path)
    assert isinstance(exc.value, SizeMismatchError) == (case == "wrong size")
    assert ds.mask("2008_000002").shape == (H, W)  # the mask comes from cls/ alone
    assert not ds.mapping.dropped and not ds.skips.counts


# ---------------------------------------------------------------- PASCAL-CONTEXT fixtures


def context_scene() -> np.ndarray:
    """Sky on top, a person and a table on the ground, a tiny patch of grass, some void."""
    mask = np.full((H, W), CTX["ground"], np.uint8)
    mask[:6, :] = CTX["sky"]
    mask[6:16, 2:7] = CTX["person"]
    mask[10:15, 15:25] = CTX["table"]
    mask[18, 28] = CTX["grass"]
    mask[19, 0] = 255
    return mask


def write_context_mask(root: Path, image_id: str, mask: np.ndarray, mode: str = "L") -> Path:
    path = root / "SegmentationClassContext" / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, i, i)])
    elif mode != "L":
        im = im.convert(mode)
    im.save(path)
    return path


@pytest.fixture
def context_root(tmp_path) -> Path:
    root = tmp_path / "VOC2010"
    for image_id in ("2008_000008", "2008_000009"):
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg")
        write_context_mask(root, image_id, context_scene())
    lists = root / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2008_000008\n2008_000009\n")
    (lists / "val.txt").write_text("2008_000009\n")
    return root


def test_context_classes_constant():
    assert len(CONTEXT_CLASSES) == len(set(CONTEXT_CLASSES)) == 59
    assert CONTEXT_CLASSES[0] == "aeroplane" and CONTEXT_CLASSES[-1] == "wood" and CTX["table"] == 50


def test_context_identity_with_the_59_classes(context_root):
    ds = ContextDataset(context_root, CONTEXT_CLASSES, split="train")
    assert ds.ids == ["2008_000008", "2008_000009"]
    assert ds.list_file == context_root / "ImageSets" / "SegmentationContext" / "train.txt"
    np.testing.assert_array_equal(ds.mask("2008_000008"), context_scene())
    ann = ds.annotation("2008_000008")
    assert (ann.width, ann.height, ann.has_mask) == (W, H, True)
    assert ann.boxes == [
        Box(28, 18, 29, 19, CTX["grass"]),
        Box(0, 6, 30, 20, CTX["ground"]),
        Box(2, 6, 7, 16, CTX["person"]),
        Box(0, 0, 30, 6, CTX["sky"]),
        Box(15, 10, 25, 15, CTX["table"]),
    ]
    assert not ds.mapping.dropped
    assert ContextDataset(context_root, CONTEXT_CLASSES, split="train", min_box_pixels=2).annotation(
        "2008_000008").boxes == [b for b in ann.boxes if b.label != CTX["grass"]]


def test_context_onto_voc_classes(context_root):
    ds = ContextDataset(context_root, VOC_CLASSES, split="val")
    voc = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
    assert ds.annotation("2008_000009").boxes == [Box(2, 6, 7, 16, voc["person"]), Box(15, 10, 25, 15, voc["diningtable"])]
    assert ds.mapping.dropped == {"ground": 1, "grass": 1, "sky": 1}  # background here: counted, no skip
    assert not ds.skips.counts
    src = context_scene()
    expected = np.zeros((H, W), np.uint8)
    expected[src == CTX["person"]] = voc["person"]
    expected[src == CTX["table"]] = voc["diningtable"]
    expected[src == 255] = 255
    np.testing.assert_array_equal(ds.mask("2008_000009"), expected)


def test_context_class_map_null_is_void(context_root):
    ds = ContextDataset(context_root, ("person", "table"), split="val",
                        class_map={"sky": None, "table": "background", "grass": "person"})
    src = context_scene()
    mask = ds.mask("2008_000009")
    assert set(np.unique(mask[src == CTX["sky"]])) == {255}
    assert set(np.unique(mask[src == CTX["table"]])) == {0}
    assert set(np.unique(mask[src == CTX["grass"]])) == {1}
    assert set(np.unique(mask[src == CTX["ground"]])) == {0}
    assert ds.annotation("2008_000009").boxes == [Box(28, 18, 29, 19, 1), Box(2, 6, 7, 16, 1)]
    with pytest.raises(BoxSupError, match="'skies' is not a PASCAL-CONTEXT class"):
        ContextDataset(context_root, CONTEXT_CLASSES, split="val", class_map={"skies": None})
    with pytest.raises(BoxSupError, match="none of PASCAL-CONTEXT's 59 classes"):
        ContextDataset(context_root, ("diningtable_x",), split="val")


def test_context_palette_png_and_open_source(context_root):
    write_context_mask(context_root, "2008_000009", context_scene(), mode="P")
    ds = open_source(SourceSpec("ctx", "context", str(context_root), split="val"), CONTEXT_CLASSES)
    np.testing.assert_array_equal(ds.mask("2008_000009"), context_scene())
    listing = context_root / "some.txt"
    listing.write_text("2008_000008\n")
    assert ContextDataset(context_root, CONTEXT_CLASSES, list_file="some.txt").ids == ["2008_000008"]


@pytest.mark.parametrize("case, expected", [
    ("class out of range", "class ids [60] beyond the 59 Context classes"),
    ("wrong size", "mask is 30x19 but the image"),
    ("missing", "mask file not found"),
    ("rgb", "got mode RGB"),
])  # fmt: skip
def test_context_bad_mask(context_root, case, expected):
    path = context_root / "SegmentationClassContext" / "2008_000008.png"
    mask = context_scene()
    if case == "class out of range":
        mask[0, 0] = 60
        write_context_mask(context_root, "2008_000008", mask)
    elif case == "wrong size":
        write_context_mask(context_root, "2008_000008", mask[:19])
    elif case == "missing":
        path.unlink()
    elif case == "rgb":
        write_context_mask(context_root, "2008_000008", mask, mode="RGB")
    ds = ContextDataset(context_root, CONTEXT_CLASSES, split="train")
    for call in (ds.annotation, ds.mask):
        with pytest.raises(BoxSupError) as exc:
            call("2008_000008")
        assert expected in one_line_naming(exc, path)
        assert isinstance(exc.value, SizeMismatchError) == (case == "wrong size")
    assert [a.image_id for a in ds.load_annotations(skip_bad=True)] == ["2008_000009"]


def test_context_missing_split(context_root):
    with pytest.raises(BoxSupError, match="split list not found") as exc:
        ContextDataset(context_root, CONTEXT_CLASSES, split="test")
    one_line_naming(exc, context_root / "ImageSets" / "SegmentationContext" / "test.txt")
