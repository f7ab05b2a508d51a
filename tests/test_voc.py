"""The VOC reader on small datasets written in the real format, including broken ones."""

import numpy as np
import pytest
from PIL import Image

from boxsup.data.annotations import Box
from boxsup.data.voc import VOCDataset, voc_palette, write_split, write_voc_sample
from boxsup.errors import BoxSupError

CLASSES = ("cat", "dog")


def make_dataset(root, n=2):
    rng = np.random.default_rng(0)
    ids = []
    for i in range(n):
        image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
        mask = np.zeros((20, 30), np.uint8)
        mask[2:10, 3:12] = 1
        mask[10, :] = 255
        write_voc_sample(root, f"im{i}", image, [Box(3, 2, 12, 10, 1), Box(15, 5, 30, 20, 2)], CLASSES, mask)
        ids.append(f"im{i}")
    write_split(root, "train", ids)
    return ids


def xml(root, image_id, objects, size=(30, 20)):
    body = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    (root / "Annotations" / f"{image_id}.xml").write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>"
    )


def test_round_trip(tmp_path):
    make_dataset(tmp_path)
    ds = VOCDataset(tmp_path, "train", CLASSES)
    assert ds.ids == ["im0", "im1"] and ds.num_classes == 3
    ann = ds.annotation("im0")
    assert (ann.width, ann.height, ann.has_mask) == (30, 20, True)
    assert ann.boxes == [Box(3, 2, 12, 10, 1), Box(15, 5, 30, 20, 2)]
    assert ds.image("im0").shape == (20, 30, 3)
    mask = ds.mask("im0")
    assert mask[5, 5] == 1 and mask[10, 0] == 255 and mask[0, 0] == 0
    with Image.open(ds.mask_path("im0")) as im:  # a real VOC palette PNG
        assert im.mode == "P" and im.getpalette()[:6] == voc_palette()[:6]


def test_voc_coordinates_are_one_based_inclusive(tmp_path):
    make_dataset(tmp_path)
    xml(tmp_path, "im0", [("cat", 1, 1, 30, 20)])
    assert VOCDataset(tmp_path, "train", CLASSES).annotation("im0").boxes == [Box(0, 0, 30, 20, 1)]


def test_boxes_outside_or_empty_are_counted_skips(tmp_path):
    make_dataset(tmp_path)
    xml(tmp_path, "im0", [("cat", 5, 5, 50, 15), ("dog", 40, 5, 60, 15), ("dog", 5, 5, 4, 15)])
    ds = VOCDataset(tmp_path, "train", CLASSES)
    assert ds.annotation("im0").boxes == [Box(4, 4, 30, 15, 1)]  # clipped to the image
    assert ds.skips.counts["box of zero area or outside the image"] == 2
    assert ds.skips.counts["box clipped to the image"] == 2


@pytest.mark.parametrize(
    "breakage, words",
    [
        (lambda r: xml(r, "im0", [("horse", 1, 1, 5, 5)]), "im0.xml: unknown class 'horse'"),
        (lambda r: (r / "Annotations" / "im0.xml").write_text("<annotation><size>"), "im0.xml: malformed XML"),
        (lambda r: xml(r, "im0", [("cat", "a", 1, 5, 5)]), r"im0.xml: object 0 \(cat\) has a missing or non-numeric"),
        (lambda r: (r / "Annotations" / "im0.xml").unlink(), "im0.xml: annotation file not found"),
    ],
)
def test_bad_annotations_name_the_file(tmp_path, breakage, words):
    make_dataset(tmp_path)
    breakage(tmp_path)
    with pytest.raises(BoxSupError, match=words):
        VOCDataset(tmp_path, "train", CLASSES).annotation("im0")


def test_bad_images_and_masks_name_the_file(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "JPEGImages" / "im0.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "JPEGImages" / "im1.jpg").unlink()
    Image.fromarray(np.full((20, 30), 7, np.uint8), mode="L").save(tmp_path / "SegmentationClass" / "im1.png")
    ds = VOCDataset(tmp_path, "train", CLASSES)
    with pytest.raises(BoxSupError, match="im0.jpg: cannot decode image"):
        ds.image("im0")
    with pytest.raises(BoxSupError, match="im1.jpg: image file not found"):
        ds.image("im1")
    with pytest.raises(BoxSupError, match=r"im1.png: mask holds class ids \[7\]"):
        ds.mask("im1")


def test_missing_split(tmp_path):
    with pytest.raises(BoxSupError, match="val.txt: split list not found"):
        VOCDataset(tmp_path, "val", CLASSES)
