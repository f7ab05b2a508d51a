"""The COCO reader on instances JSON written with the real field names, and the COCO copy of a VOC-layout set."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from boxsup.cli import main
from boxsup.data.annotations import IGNORE, Box
from boxsup.data.coco import CocoDataset
from boxsup.data.images import SizeMismatchError
from boxsup.data.sources import resolve_classes
from boxsup.data.synth import DEMO_CLASSES, generate_dataset
from boxsup.data.to_coco import write_coco_copy
from boxsup.data.voc import VOC_CLASSES, VOCDataset, write_split, write_voc_sample
from boxsup.errors import BoxSupError

# Real COCO category ids (with their gaps) and names.
CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 5, "name": "airplane", "supercategory": "vehicle"},
    {"id": 17, "name": "cat", "supercategory": "animal"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 25, "name": "giraffe", "supercategory": "animal"},
]
VOC = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
W, H = 40, 30


def file_name(coco_id):
    return f"COCO_train2014_{coco_id:012d}.jpg"


def write_jpeg(folder, name, size=(W, H), mode="RGB", orientation=None):
    """A JPEG of ``size`` (as stored) in ``mode``; ``orientation`` sets the EXIF orientation tag."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:5, :5] = 255  # a white corner, to see which way the picture is turned
    im = Image.fromarray(pixels).convert(mode)
    extra = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    im.save(folder / name, format="JPEG", quality=95, **extra)
    return folder / name


def ann(ann_id, image_id, category_id, bbox, segmentation=(), iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd,
            "segmentation": segmentation if segmentation != () else []}


def image_entry(coco_id, width=W, height=H, name=None):
    return {"id": coco_id, "width": width, "height": height, "file_name": name or file_name(coco_id),
            "license": 1, "coco_url": "", "date_captured": "2013-11-14 16:28:13", "flickr_url": ""}


def write_instances(root, images, annotations, categories=CATEGORIES, **replace):
    """``root/annotations/instances_train2014.json`` in the real layout; ``replace`` overrides top-level keys."""
    doc = {"info": {"description": "test"}, "licenses": [], "images": images, "annotations": annotations,
           "categories": categories} | replace
    path = root / "annotations" / "instances_train2014.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def rle(pixels):
    """Compressed RLE (counts a string) as COCO results and exporters write it."""
    encoded = mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode("ascii")}


def uncompressed_rle(pixels):
    """Uncompressed RLE (counts a list of run lengths, column-major, zeros first), as COCO's crowd regions are stored."""
    flat = pixels.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": list(pixels.shape), "counts": runs}


def open_coco(root, classes=VOC_CLASSES, **kwargs):
    return CocoDataset(root / "annotations" / "instances_train2014.json", root / "train2014", classes, **kwargs)


def one_line_naming(exc_info, path):
    text = str(exc_info.value)
    assert "\n" not in text and str(path) in text, text


# ---------------------------------------------------------------- boxes, ids, classes, crowds


def test_boxes_ids_classes_and_crowds(tmp_path):
    for coco_id in (25, 9, 3):
        write_jpeg(tmp_path / "train2014", file_name(coco_id))
    path = write_instances(tmp_path, [image_entry(25), image_entry(9), image_entry(3)], [
        ann(1, 9, 5, [2.5, 3.2, 10.1, 4.3]),  # fractional: the whole pixels that hold it
        ann(2, 9, 18, [30.0, 20.0, 15.0, 15.0]),  # crosses the right and bottom border: clipped
        ann(3, 9, 18, [5, 5, 0, 4]),  # zero width: skipped
        ann(4, 9, 18, [50, 5, 5, 5]),  # outside the image: clipped to nothing, skipped
        ann(5, 9, 1, [0, 0, 10, 10], iscrowd=1, segmentation=uncompressed_rle(np.ones((H, W), bool))),
        ann(6, 9, 25, [1, 1, 5, 5]),  # giraffe: not a VOC class
        ann(7, 3, 17, [0, 0, 40, 30]),
        ann(8, 3, 25, [3, 3, 4, 4]),
        ann(9, 3, 18, [-0.5, 1.0, 4.0, 2.0]),  # starts left of the image
    ])  # fmt: skip
    ds = open_coco(tmp_path)
    assert ds.ids == ["COCO_train2014_000000000003", "COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    assert ds.list_file == path and ds.name == "instances_train2014" and ds.num_classes == 21
    assert ds.origin() == {"data_root": str((tmp_path / "train2014").resolve()), "split": "instances_train2014.json"}
    a9 = ds.annotation("COCO_train2014_000000000009")
    assert (a9.width, a9.height, a9.has_mask) == (W, H, True)  # the crowd carries an RLE
    assert a9.boxes == [Box(2, 3, 13, 8, VOC["aeroplane"]), Box(30, 20, 40, 30, VOC["dog"])]
    a3 = ds.annotation("COCO_train2014_000000000003")
    assert a3.boxes == [Box(0, 0, 40, 30, VOC["cat"]), Box(0, 1, 4, 3, VOC["dog"])] and not a3.has_mask
    a25 = ds.annotation("COCO_train2014_000000000025")
    assert a25.boxes == [] and not a25.has_mask
    assert ds.skips.counts == {"box clipped to the image": 3, "box of zero area or outside the image": 1,
                               "zero-width box": 1, "crowd region": 1}
    assert ds.mapping.dropped == {"giraffe": 2}
    assert ds.load_annotations(skip_bad=False)[1].boxes == a9.boxes


def square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def test_class_map_and_run_classes(tmp_path):
    write_jpeg(tmp_path / "train2014", file_name(1))
    path = write_instances(tmp_path, [image_entry(1)], [
        ann(1, 1, 5, [0, 0, 4, 4], segmentation=square(0, 0, 4)),
        ann(2, 1, 25, [4, 4, 4, 4], segmentation=square(4, 4, 4)),
        ann(3, 1, 1, [8, 8, 4, 4], segmentation=square(8, 8, 4)),  # mapped to null: no box, void in the mask
        ann(4, 1, 18, [12, 12, 4, 4], segmentation=square(12, 12, 4)),  # mapped to background
        ann(5, 1, 17, [16, 16, 4, 4], segmentation=square(16, 16, 4)),  # not a run class: background
    ])  # fmt: skip
    ds = open_coco(tmp_path, classes=("giraffe", "plane"),
                   class_map={"airplane": "plane", "person": None, "dog": "background"})
    assert ds.annotation(ds.ids[0]).boxes == [Box(0, 0, 4, 4, 2), Box(4, 4, 8, 8, 1)]
    assert ds.mapping.dropped == {"person": 1, "dog": 1, "cat": 1}
    mask = ds.mask(ds.ids[0])
    assert (mask[0:4, 0:4] == 2).all() and (mask[4:8, 4:8] == 1).all() and (mask[8:12, 8:12] == IGNORE).all()
    assert np.count_nonzero(mask) == 3 * 16
    with pytest.raises(BoxSupError, match="'airplane' maps to 'jet', which is not a class of this run"):
        open_coco(tmp_path, classes=("plane",), class_map={"airplane": "jet"})
    with pytest.raises(BoxSupError, match="class_map: 'aeroplane' is not a category of .*instances_train2014.json") as exc:
        open_coco(tmp_path, classes=("plane",), class_map={"aeroplane": "plane"})
    one_line_naming(exc, path)


# ---------------------------------------------------------------- masks


def test_mask_painted_from_polygons_and_rle(tmp_path):
    write_jpeg(tmp_path / "train2014", file_name(1))
    write_jpeg(tmp_path / "train2014", file_name(2))
    write_jpeg(tmp_path / "train2014", file_name(4))
    cat = np.zeros((H, W), bool)
    cat[4:8, 5:9] = True  # inside the dog: small, so it stays on top
    crowd = np.zeros((H, W), bool)
    crowd[22:30, 30:40] = True
    write_instances(tmp_path, [image_entry(1), image_entry(2), image_entry(4)], [
        ann(1, 1, 17, [5, 4, 4, 4], segmentation=rle(cat)),
        ann(2, 1, 18, [0, 0, 20, 20], segmentation=[[0, 0, 20, 0, 20, 20, 0, 20]]),
        ann(3, 1, 25, [12, 12, 4, 4], segmentation=[[12, 12, 16, 12, 16, 16, 12, 16]]),  # dropped: background on top
        ann(4, 1, 1, [30, 22, 10, 8], iscrowd=1, segmentation=uncompressed_rle(crowd)),
        ann(5, 1, 25, [0, 25, 4, 4], iscrowd=1, segmentation=rle(np.pad(np.ones((5, 4), bool), ((25, 0), (0, 36))))),
        ann(6, 2, 17, [1, 1, 5, 5]),  # empty segmentation: no mask
        ann(7, 2, 18, [1, 1, 5, 5], segmentation=[]),
    ])  # fmt: skip
    ds = open_coco(tmp_path)
    mask = ds.mask(ds.ids[0])
    expected = np.zeros((H, W), np.uint8)
    expected[0:20, 0:20] = VOC["dog"]
    expected[12:16, 12:16] = 0
    expected[cat] = VOC["cat"]
    expected[crowd] = IGNORE  # a crowd of a run class is void; the giraffe crowd is background
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    ann1 = ds.annotation(ds.ids[0])
    assert ann1.has_mask and ann1.boxes == [Box(5, 4, 9, 8, VOC["cat"]), Box(0, 0, 20, 20, VOC["dog"])]
    for image_id in ds.ids[1:]:  # objects without outlines, and no objects at all
        assert ds.mask(image_id) is None and not ds.annotation(image_id).has_mask


def test_object_without_outline_beside_outlined_ones_is_void(tmp_path):
    write_jpeg(tmp_path / "train2014", file_name(1))
    write_instances(tmp_path, [image_entry(1)], [
        ann(1, 1, 17, [0, 0, 4, 4], segmentation=[[0, 0, 4, 0, 4, 4, 0, 4]]),
        ann(2, 1, 18, [10.5, 10, 5, 5]),
    ])  # fmt: skip
    mask = open_coco(tmp_path).mask(f"COCO_train2014_{1:012d}")
    assert (mask[:4, :4] == VOC["cat"]).all() and (mask[10:15, 10:16] == IGNORE).all()
    assert np.count_nonzero(mask) == 16 + 30


# ---------------------------------------------------------------- pictures as users expect


def test_greyscale_cmyk_and_exif_rotated_jpegs(tmp_path):
    folder = tmp_path / "train2014"
    write_jpeg(folder, file_name(1), mode="L")
    write_jpeg(folder, file_name(2), mode="CMYK")
    write_jpeg(folder, file_name(3), size=(H, W), orientation=6)  # stored 30x40, shown 40x30 (turned clockwise)
    box = ann(0, 0, 18, [1, 2, 3, 4])
    write_instances(tmp_path, [image_entry(1), image_entry(2), image_entry(3)],
                    [box | {"id": i, "image_id": i} for i in (1, 2, 3)])
    ds = open_coco(tmp_path)
    for image_id in ds.ids:
        image = ds.image(image_id)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert ds.annotation(image_id).boxes == [Box(1, 2, 4, 6, VOC["dog"])]
    turned = ds.image(ds.ids[2])
    assert turned[:5, -5:].mean() > 200  # the stored top-left corner is now top-right
    assert turned[:5, :5].mean() < 200
    with Image.open(ds.image_path(ds.ids[1])) as im:
        assert im.mode == "CMYK"


def test_size_mismatch_names_image_and_json(tmp_path):
    write_jpeg(tmp_path / "train2014", file_name(1), size=(H, W), orientation=6)
    path = write_instances(tmp_path, [image_entry(1, width=H, height=W)], [])  # the stored size, not the upright one
    ds = open_coco(tmp_path)
    with pytest.raises(SizeMismatchError, match="image is 40x30 but .* says 30x40") as exc:
        ds.annotation(ds.ids[0])
    one_line_naming(exc, path)
    assert str(ds.image_path(ds.ids[0])) in str(exc.value)


# ---------------------------------------------------------------- bad input: one line naming the file


def good_document():
    return {"images": [image_entry(1)], "annotations": [ann(1, 1, 18, [1, 1, 4, 4])], "categories": CATEGORIES}


@pytest.mark.parametrize(
    "breakage, words",
    [
        (lambda p: p.unlink(), "COCO annotations file not found"),
        (lambda p: p.write_text('{"images": [}'), "not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), "top level must be a JSON object"),
        (lambda p: p.write_text(json.dumps(good_document() | {"categories": None})), "'categories' must be a list"),
        (lambda p: p.write_text(json.dumps({k: v for k, v in good_document().items() if k != "categories"})),
         "missing top-level key 'categories'"),
        (lambda p: p.write_text(json.dumps(good_document() | {"annotations": [{"id": 1, "image_id": 1, "category_id": 18}]})),
         r"annotations\[0\] lacks field 'bbox'"),
        (lambda p: p.write_text(json.dumps(good_document() | {"images": [{"id": 1, "file_name": "a.jpg", "width": 4}]})),
         r"images\[0\] lacks field 'height'"),
        (lambda p: p.write_text(json.dumps(good_document() | {"annotations": [ann(7, 1, 999, [1, 1, 2, 2])]})),
         "annotation id 7 has unknown category id 999"),
        (lambda p: p.write_text(json.dumps(good_document() | {"annotations": [ann(7, 77, 18, [1, 1, 2, 2])]})),
         "annotation id 7 refers to image id 77, which is not in images"),
        (lambda p: p.write_text(json.dumps(good_document() | {"annotations": [ann(7, 1, 18, [1, 1, 2, 2]) | {"bbox": [1, 1, "2"]}]})),
         r"annotation id 7 has bbox \[1, 1, '2'\], not \[x, y, width, height\] numbers"),
        (lambda p: p.write_text(json.dumps(good_document() | {"images": [image_entry(1, name="a/x.jpg"),
                                                                        image_entry(2, name="b/x.jpg")]})),
         "images 1 and 2 share the file stem 'x'"),
        (lambda p: p.write_text(json.dumps(good_document() | {"images": [image_entry(1), image_entry(1)]})),
         r"images\[1\] has id 1, which an earlier entry already uses"),
    ],
)
def test_bad_json_is_one_line_naming_the_file(tmp_path, breakage, words):
    write_jpeg(tmp_path / "train2014", file_name(1))
    path = write_instances(tmp_path, **good_document())
    breakage(path)
    with pytest.raises(BoxSupError, match=words) as exc:
        open_coco(tmp_path)
    one_line_naming(exc, path)


def test_missing_image_is_a_counted_skip(tmp_path):
    write_jpeg(tmp_path / "train2014", file_name(1))
    write_instances(tmp_path, [image_entry(1), image_entry(2)], [ann(1, 1, 18, [1, 1, 4, 4]), ann(2, 2, 18, [1, 1, 4, 4])])
    ds = open_coco(tmp_path)
    missing = tmp_path / "train2014" / file_name(2)
    with pytest.raises(BoxSupError, match="image file not found") as exc:
        ds.annotation(ds.ids[1])
    one_line_naming(exc, missing)
    with pytest.raises(BoxSupError, match="image file not found"):
        ds.image(ds.ids[1])
    assert [a.image_id for a in ds.load_annotations(skip_bad=True)] == [ds.ids[0]]
    assert ds.skips.counts["image left out: bad annotation, image or mask"] == 1


def test_undecodable_segmentation_names_the_file(tmp_path):
    write_jpeg(tmp_path / "train2014", file_name(1))
    bad = {"size": [H + 1, W], "counts": rle(np.ones((H + 1, W), bool))["counts"]}  # another image's size
    path = write_instances(tmp_path, [image_entry(1)], [ann(3, 1, 18, [1, 1, 4, 4], segmentation=bad)])
    ds = open_coco(tmp_path)
    with pytest.raises(BoxSupError, match="annotation id 3: segmentation is 40x31 but its image is 40x30") as exc:
        ds.mask(ds.ids[0])
    one_line_naming(exc, path)


# ---------------------------------------------------------------- the COCO copy of a VOC-layout set


def test_coco_copy_reads_back_as_the_voc_set(tmp_path):
    voc_root, coco_root = tmp_path / "voc", tmp_path / "voc-coco"
    generate_dataset(voc_root, n_images=12, size=64)
    summary = write_coco_copy(voc_root, coco_root)
    assert summary["splits"]["train"]["images"] + summary["splits"]["val"]["images"] == 12
    assert all(s["mask_pixels_not_carried"] == 0 for s in summary["splits"].values())
    assert (coco_root / "classes.txt").read_text().split() == list(DEMO_CLASSES)
    for split in ("train", "val"):
        voc = VOCDataset(voc_root, split, DEMO_CLASSES)
        coco = CocoDataset(coco_root / "annotations" / f"instances_{split}.json", coco_root / split, DEMO_CLASSES)
        assert coco.ids == voc.ids
        for image_id in voc.ids:
            a, b = voc.annotation(image_id), coco.annotation(image_id)
            assert (b.width, b.height, b.boxes, b.has_mask) == (a.width, a.height, a.boxes, a.has_mask)
            assert np.array_equal(coco.mask(image_id), voc.mask(image_id))
            assert np.array_equal(coco.image(image_id), voc.image(image_id))
            assert coco.image_path(image_id).read_bytes() == voc.image_path(image_id).read_bytes()
        assert not coco.skips.counts and not coco.mapping.dropped
    doc = json.loads((coco_root / "annotations" / "instances_train.json").read_text())
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3, 4, 5]
    first = doc["annotations"][0]
    assert isinstance(first["segmentation"]["counts"], str) and first["iscrowd"] == 0
    name = doc["images"][0]["file_name"]
    assert os.path.samefile(coco_root / "train" / name, voc_root / "JPEGImages" / name)  # a hard link


def test_coco_copy_carries_void_as_a_crowd_region(tmp_path):
    voc_root = tmp_path / "voc"
    rng = np.random.default_rng(1)
    mask = np.zeros((20, 30), np.uint8)
    mask[2:10, 3:12] = 1
    mask[12:18, 15:25] = 2
    mask[10, :] = IGNORE  # VOC's void band
    mask[12:18, 15] = IGNORE
    boxes = [Box(3, 2, 12, 10, 1), Box(15, 12, 25, 18, 2)]
    write_voc_sample(voc_root, "im0", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), boxes, ("cat", "dog"), mask)
    write_voc_sample(voc_root, "im1", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), boxes[:1], ("cat", "dog"))
    write_split(voc_root, "train", ["im0", "im1"])
    summary = write_coco_copy(voc_root, tmp_path / "coco", split_names=("train",), classes=("cat", "dog"))
    assert summary["splits"]["train"] | {"json": ""} == {"json": "", "images": 2, "objects": 3, "void_regions": 1,
                                                       "mask_pixels_not_carried": 0, "masked_images_without_objects": 0}
    coco = CocoDataset(tmp_path / "coco" / "annotations" / "instances_train.json", tmp_path / "coco" / "train", ("cat", "dog"))
    voc = VOCDataset(voc_root, "train", ("cat", "dog"))
    assert np.array_equal(coco.mask("im0"), mask) and coco.mask("im1") is None
    assert [coco.annotation(i).boxes for i in coco.ids] == [boxes, boxes[:1]] == [voc.annotation(i).boxes for i in voc.ids]
    assert coco.skips.counts == {"crowd region": 1}


def test_coco_copy_of_boxes_only_images_has_empty_segmentations(tmp_path):
    voc_root = tmp_path / "voc"
    generate_dataset(voc_root, n_images=4, size=48)
    for png in (voc_root / "SegmentationClass").glob("*.png"):
        png.unlink()
    write_coco_copy(voc_root, tmp_path / "coco", split_names=("trainval",))
    doc = json.loads((tmp_path / "coco" / "annotations" / "instances_trainval.json").read_text())
    assert doc["annotations"] and all(a["segmentation"] == [] for a in doc["annotations"])
    coco = CocoDataset(tmp_path / "coco" / "annotations" / "instances_trainval.json", tmp_path / "coco" / "trainval",
                       DEMO_CLASSES)
    voc = VOCDataset(voc_root, "trainval", DEMO_CLASSES)
    assert all(coco.mask(i) is None and coco.annotation(i).boxes == voc.annotation(i).boxes for i in voc.ids)


def test_cli_synth_writes_the_coco_copy_beside(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "synth", "--out", str(out), "--images", "4", "--size", "48", "--format", "coco"]) == 0
    assert "COCO copy" in capsys.readouterr().out
    for split in ("train", "val"):
        assert (tmp_path / "demo-coco" / "annotations" / f"instances_{split}.json").is_file()
    assert (out / "JPEGImages").is_dir()


def coco_config(root, **data):
    source = {"name": "c", "format": "coco", "root": str(root), "annotations": "annotations/instances_train2014.json",
              "images": "train2014", "supervision": "box"}
    return {"data": {"classes": "auto", "sources": [source], "val": dict(source, name="v"), **data}}


def test_auto_classes_of_a_coco_source_are_its_categories_in_id_order(tmp_path):
    shuffled = [CATEGORIES[3], CATEGORIES[0], CATEGORIES[4], CATEGORIES[2], CATEGORIES[1]]
    write_instances(tmp_path, [image_entry(1)], [ann(1, 1, 18, (1, 1, 5, 5))], categories=shuffled)
    assert resolve_classes(coco_config(tmp_path)) == ("person", "airplane", "cat", "dog", "giraffe")
    (tmp_path / "classes.txt").write_text("dog\ncat\n")  # a classes.txt beside it is the user's word
    assert resolve_classes(coco_config(tmp_path)) == ("dog", "cat")
    assert resolve_classes(coco_config(tmp_path, classes="voc")) == VOC_CLASSES


def test_auto_classes_of_a_missing_coco_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(BoxSupError, match="instances_train2014.json: COCO annotations file not found"):
        resolve_classes(coco_config(tmp_path))
