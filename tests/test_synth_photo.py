"""The photo-style synthetic set: deterministic per seed, readable by VOCDataset, full-extent boxes, void bands."""

from pathlib import Path

import numpy as np
import pytest

from boxsup.cli import main
from boxsup.data.annotations import BACKGROUND, IGNORE
from boxsup.data.synth_photo import (
    FILL_RANGE,
    PHOTO_CLASSES,
    SOURCES,
    _photo,
    generate_photo_dataset,
    photo_sample,
    void_band,
)
from boxsup.data.voc import VOCDataset
from conftest import assert_same_seed_same_bytes

N, SIZE, SEED = 10, 128, 3


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("photo")
    return root, generate_photo_dataset(root, n_images=N, size=SIZE, seed=SEED)


@pytest.fixture(scope="module")
def samples() -> list:
    return [photo_sample(SEED, i, SIZE) for i in range(1, N + 1)]


def test_every_source_is_bundled_with_scikit_image():
    # No pooch in the environment: a photograph that needed a download would raise here.
    for name in SOURCES:
        image = _photo(name)
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256


def test_same_seed_same_bytes_other_seed_differs(photo, tmp_path):
    assert_same_seed_same_bytes(generate_photo_dataset, photo[0], tmp_path, ["JPEGImages", "SegmentationClass", "Annotations"],
                                n_images=N, size=SIZE, seed=SEED)


def test_reader_loads_every_image_with_void_bands(photo):
    root, summary = photo
    assert (root / "classes.txt").read_text().split() == list(PHOTO_CLASSES)
    ds = VOCDataset(root, "trainval", PHOTO_CLASSES)
    train, val = VOCDataset(root, "train", PHOTO_CLASSES).ids, VOCDataset(root, "val", PHOTO_CLASSES).ids
    assert not set(train) & set(val) and sorted(train + val) == ds.ids and len(ds) == N
    assert summary["images"] == {"train": len(train), "val": len(val), "trainval": N}
    widths, n_objects = set(), 0
    for image_id in ds.ids:
        image, mask, ann = ds.image(image_id), ds.mask(image_id), ds.annotation(image_id)
        assert image.shape == (ann.height, ann.width, 3) and mask.shape == (ann.height, ann.width)
        assert ann.height == SIZE and 0.75 * SIZE - 1 <= ann.width <= 1.33 * SIZE + 1
        widths.add(ann.width)
        assert set(np.unique(mask).tolist()) <= {*range(len(PHOTO_CLASSES) + 1), IGNORE}
        assert 1 <= len(ann.boxes) <= 3
        for box in ann.boxes:
            assert np.any(mask[box.y0 : box.y1, box.x0 : box.x1] == box.label)
        # Void lies on label borders only, and no two different labels touch without void between.
        void = mask == IGNORE
        assert void.any()
        labelled = np.where(void, -1, mask.astype(int))
        for a, b in ((labelled[:, 1:], labelled[:, :-1]), (labelled[1:], labelled[:-1])):
            assert not np.any((a >= 0) & (b >= 0) & (a != b))
        n_objects += len(ann.boxes)
    assert not ds.skips.counts
    assert len(widths) > 1  # rectangular, of varying aspect
    assert sum(summary["objects"].values()) == n_objects


def test_boxes_hold_whole_objects_and_masks_the_visible_part(photo, samples):
    root, _ = photo
    ds = VOCDataset(root, "trainval", PHOTO_CLASSES)
    occluded = 0
    for image_id, sample in zip(ds.ids, samples):
        assert ds.annotation(image_id).boxes == sample.boxes
        assert np.array_equal(ds.mask(image_id), sample.mask)
        assert np.array_equal(sample.mask == IGNORE, void_band(sample.instances))
        assert np.all(sample.mask[(sample.instances < 0) & (sample.mask != IGNORE)] == BACKGROUND)
        for k, (box, silhouette) in enumerate(zip(sample.boxes, sample.silhouettes)):
            ys, xs = np.nonzero(silhouette)
            assert (box.x0, box.y0, box.x1, box.y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            visible = sample.instances == k
            assert np.all(silhouette[visible]) and np.all(sample.mask[visible & (sample.mask != IGNORE)] == box.label)
            assert np.count_nonzero(visible) >= 0.4 * np.count_nonzero(silhouette)
            occluded += np.count_nonzero(visible) < np.count_nonzero(silhouette)
    assert occluded > 0  # some boxes cover hidden parts of their object


def test_box_fill_in_range(photo, samples):
    _, summary = photo
    fills = [np.count_nonzero(s) / b.area for sample in samples for s, b in zip(sample.silhouettes, sample.boxes)]
    assert all(FILL_RANGE[0] <= f <= FILL_RANGE[1] for f in fills)
    assert 0.35 <= np.mean(fills) <= 0.75
    assert summary["mean_object_fill"] == pytest.approx(np.mean(fills))
    assert 0.3 <= summary["mean_box_fill"] <= summary["mean_object_fill"]  # visible part over box


def test_cli_photo_style_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--style", "photo", "--out", str(out), "--images", "3", "--size", "320", "--seed", "1"]) == 0
    ds = VOCDataset(out, "trainval", (out / "classes.txt").read_text().split())
    assert ds.ids == ["photo_000001", "photo_000002", "photo_000003"] and ds.image(ds.ids[0]).shape[0] == 320
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--style", "oil", "--out", str(tmp_path / "no")])
    assert exc.value.code == 2
    assert "invalid choice: 'oil'" in capsys.readouterr().err
    assert main(["data", "synth", "--style", "photo", "--out", str(tmp_path / "small"), "--size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boxsup: error:") and "\n" not in err
    assert not (tmp_path / "no").exists() and not (tmp_path / "small").exists()


def test_rejects_degenerate_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_photo_dataset(tmp_path, n_images=1)
    with pytest.raises(ValueError):
        generate_photo_dataset(tmp_path, n_images=4, val_fraction=0.0)
    with pytest.raises(ValueError):
        photo_sample(0, 1, size=64)


def test_no_distractors_is_deterministic_and_changes_only_the_background(tmp_path, capsys):
    """--no-distractors: the same bytes for the same seed; the objects' labels still describe the image."""
    clean = [photo_sample(SEED, i, SIZE, distractors=False) for i in (1, 2)]
    again = [photo_sample(SEED, i, SIZE, distractors=False) for i in (1, 2)]
    cluttered = photo_sample(SEED, 1, SIZE)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(clean, again))
    assert not np.array_equal(clean[0].image, cluttered.image)
    for sample in clean:
        assert set(np.unique(sample.mask).tolist()) <= {*range(len(PHOTO_CLASSES) + 1), IGNORE}
        assert all(np.any(sample.mask[b.y0 : b.y1, b.x0 : b.x1] == b.label) for b in sample.boxes)
    out = tmp_path / "clean"
    assert main(["data", "synth", "--style", "photo", "--no-distractors", "--out", str(out), "--images", "2",
                 "--size", str(SIZE), "--seed", str(SEED)]) == 0
    assert np.array_equal(VOCDataset(out, "trainval", PHOTO_CLASSES).mask("photo_000001"), clean[0].mask)
    capsys.readouterr()
    assert main(["data", "synth", "--no-distractors", "--out", str(tmp_path / "demo")]) == 2
    assert "--no-distractors needs --style photo" in capsys.readouterr().err


def test_class_subset_draws_only_those_classes_in_the_given_label_order(tmp_path, capsys):
    """--classes: only the given classes, label k the k-th name; the files are the samples; bad names are errors."""
    out = tmp_path / "subset"
    assert main(["data", "synth", "--style", "photo", "--classes", "star,animal", "--out", str(out), "--images", "6",
                 "--size", str(SIZE), "--seed", str(SEED)]) == 0
    assert (out / "classes.txt").read_text().split() == ["star", "animal"]
    ds = VOCDataset(out, "trainval", ["star", "animal"])
    seen = set()
    for i, image_id in enumerate(ds.ids, start=1):
        sample = photo_sample(SEED, i, SIZE, classes=("star", "animal"))
        assert np.array_equal(ds.mask(image_id), sample.mask)
        assert set(np.unique(sample.mask).tolist()) <= {BACKGROUND, 1, 2, IGNORE}
        seen.update(b.label for b in sample.boxes)
    assert seen == {1, 2}
    capsys.readouterr()
    assert main(["data", "synth", "--style", "photo", "--classes", "star,cat", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown class 'cat'" in err and "\n" not in err and not (tmp_path / "bad").exists()
    assert main(["data", "synth", "--style", "photo", "--classes", "star,star", "--out", str(tmp_path / "bad")]) == 2
    assert "repeated" in capsys.readouterr().err
    assert main(["data", "synth", "--classes", "star", "--out", str(tmp_path / "demo")]) == 2
    assert "--classes needs --style photo" in capsys.readouterr().err
