"""``boxsup predict``: label maps for folders, lists and globs of images; bad images counted, not fatal."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from boxsup.cli import main
from boxsup.data.images import read_rgb
from boxsup.data.voc import voc_palette
from boxsup.evaluation.inference import predict_label_map
from boxsup.serving.trained_model import load_trained_model
from tiny_checkpoints import save_tiny_checkpoint, write_images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", scales=(0.5, 1.0))


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_trained_model(checkpoint)


def expected(model, path, scales=(0.5, 1.0), crf=False):
    """The label map one image gets on its own (what ``boxsup eval`` computes)."""
    return predict_label_map(model.network, read_rgb(path), scales=scales, crf=crf)  # read-only, as decoded


def read_png(path):
    with Image.open(path) as im:
        return im.mode, im.getpalette(), np.asarray(im)


def test_a_folder_with_broken_images_writes_the_others_and_names_the_broken(checkpoint, model, tmp_path, capsys, caplog):
    good = write_images(tmp_path / "in", [(64, 48), (40, 72), (64, 48), (64, 48)])
    (tmp_path / "in" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    truncated = tmp_path / "in" / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])  # a header that reads, pixel data that does not
    (tmp_path / "in" / "notes.txt").write_text("not an image: left alone")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        status = main(["predict", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "in"),
                       "--out", str(out), "--overlay", "--batch-size", "2"])
    assert status == 1  # some images could not be read: a script can tell
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "4 label maps written, 2 unreadable images" in summary
    assert "garbage.jpg" in summary and "truncated.jpg" in summary
    skipped = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(skipped) == 2 and any("garbage.jpg" in m for m in skipped) and any("truncated.jpg" in m for m in skipped)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{p.stem}.png" for p in good]
    for path in good:  # batched by size, each map is the one the image gets alone; palette PNG, input size
        mode, palette, labels = read_png(out / f"{path.stem}.png")
        assert mode == "P" and palette[: 3 * 3] == voc_palette()[: 3 * 3]
        assert labels.shape == read_rgb(path).shape[:2]
        np.testing.assert_array_equal(labels, expected(model, path))
        assert len(np.unique(labels)) > 1  # a real map, not a constant
        with Image.open(out / "overlay" / f"{path.stem}.jpg") as overlay:
            assert overlay.size == Image.open(path).size
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_a_list_file_and_a_glob_name_the_same_images(checkpoint, tmp_path):
    images = write_images(tmp_path / "pics", [(48, 48), (56, 40), (48, 48)], suffix=".png")
    listing = tmp_path / "lists" / "some.txt"
    listing.parent.mkdir()
    listing.write_text(f"# two of them\n../pics/{images[0].name}\n\n{images[2]}\n../pics/missing.png\n")
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(listing), "--out", str(tmp_path / "a")]) == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["img0.png", "img2.png"]  # missing.png: counted
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "pics" / "img[02].png"),
                 "--out", str(tmp_path / "b")]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == \
        {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}


def test_scales_and_crf_default_to_the_runs_and_can_be_changed(checkpoint, model, tmp_path):
    (image,) = write_images(tmp_path / "in", [(64, 48)])
    assert not np.array_equal(expected(model, image), expected(model, image, scales=(1.0,)))  # scales matter here
    for flags, scales, crf in (([], (0.5, 1.0), False), (["--scales", "1"], (1.0,), False),
                               (["--scales", "1", "--crf"], (1.0,), True)):
        out = tmp_path / "-".join(flags or ["default"])
        assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(image), "--out", str(out), *flags]) == 0
        np.testing.assert_array_equal(read_png(out / "img0.png")[2], expected(model, image, scales, crf), err_msg=str(flags))


def test_user_mistakes_are_one_line_and_write_nothing(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "a", [(32, 32)])
    write_images(tmp_path / "b", [(32, 32)], suffix=".png")
    out = tmp_path / "out"
    cases = [
        (["--images", str(tmp_path / "a"), str(tmp_path / "b")], "would both write"),  # a/img0.jpg, b/img0.png
        (["--images", str(tmp_path / "nowhere")], "no such folder, image, list file or pattern"),
        (["--images", str(tmp_path / "a" / "*.gif")], "no file matches this pattern"),
        (["--images", str(tmp_path / "a"), "--scales", "0"], "--scales"),
    ]
    for args, message in cases:
        assert main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("boxsup: error:") and message in err and "\n" not in err, err
    assert not out.exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nothing")
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "bad"), "--out", str(out)]) == 2
    assert "none of the 1 images could be read" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "none.pt"), "--images", str(tmp_path / "a"), "--out", str(out)]) == 2
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
