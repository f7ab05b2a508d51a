"""The synthetic demo set: deterministic, readable by VOCDataset, with tight boxes and non-box-shaped masks."""

from pathlib import Path

import numpy as np
import pytest

from boxsup.data.annotations import IGNORE
from boxsup.data.synth import DEMO_CLASSES, generate_dataset, synth_sample
from boxsup.data.voc import VOCDataset
from conftest import assert_same_seed_same_bytes

N, SIZE, SEED = 12, 80, 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    return root, generate_dataset(root, n_images=N, size=SIZE, seed=SEED)


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    assert_same_seed_same_bytes(generate_dataset, demo[0], tmp_path, ["JPEGImages"], n_images=N, size=SIZE, seed=SEED)


def test_layout_splits_and_summary(demo):
    root, summary = demo
    assert (root / "classes.txt").read_text().split() == list(DEMO_CLASSES)
    train, val, trainval = (VOCDataset(root, split, DEMO_CLASSES).ids for split in ("train", "val", "trainval"))
    assert not set(train) & set(val) and sorted(train + val) == trainval
    assert trainval[0] == "synth_000001" and len(trainval) == N
    assert summary["images"] == {"train": len(train), "val": len(val), "trainval": N}
    assert len(val) == 3
    assert set(summary["objects"]) == set(DEMO_CLASSES)


def test_reader_loads_every_image(demo):
    root, summary = demo
    ds = VOCDataset(root, "trainval", DEMO_CLASSES)
    n_objects = 0
    for image_id in ds.ids:
        image, mask, ann = ds.image(image_id), ds.mask(image_id), ds.annotation(image_id)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert mask is not None and mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask).tolist()) <= {*range(len(DEMO_CLASSES) + 1), IGNORE}
        assert (ann.width, ann.height) == (SIZE, SIZE) and ann.has_mask
        assert len(ann.boxes) >= 1
        n_objects += len(ann.boxes)
    assert not ds.skips.counts
    assert sum(summary["objects"].values()) == n_objects


def test_boxes_tightly_bound_visible_pixels_and_match_files(demo):
    root, _ = demo
    ds = VOCDataset(root, "trainval", DEMO_CLASSES)
    for index, image_id in enumerate(ds.ids, start=1):
        sample = synth_sample(SEED, index, SIZE)
        assert ds.annotation(image_id).boxes == sample.boxes
        assert np.array_equal(ds.mask(image_id), sample.mask)
        assert np.all(sample.mask[sample.instances < 0] == 0)
        for k, box in enumerate(sample.boxes):
            visible = sample.instances == k
            assert np.all(sample.mask[visible] == box.label)
            ys, xs = np.nonzero(visible)
            assert (box.x0, box.y0, box.x1, box.y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_masks_are_clearly_not_boxes(demo):
    _, summary = demo
    fills = [
        np.count_nonzero(s.instances == k) / box.area
        for s in (synth_sample(SEED, i, SIZE) for i in range(1, N + 1))
        for k, box in enumerate(s.boxes)
    ]
    # The mask lies inside its box, so mask area / box area is the filled box's IoU with the mask.
    assert np.mean(fills) < 0.7
    assert summary["mean_box_fill"] == pytest.approx(np.mean(fills))


def test_rejects_degenerate_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, n_images=1)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, n_images=4, val_fraction=1.0)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, n_images=4, size=16)
