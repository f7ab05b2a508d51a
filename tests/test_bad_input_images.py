"""Pictures and text files as users hand them in: high bit depths, transparency, byte-order marks,
invisible characters, ids with spaces, YAML mistakes, and photos far larger than VOC's.

Each case is read the way the user meant, or refused with one line naming the file; never a blank
picture, a silently cut id or an invisible difference in a message.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from boxsup.cli import main
from boxsup.config import DEFAULTS, load_config
from boxsup.data.images import picture_size, read_rgb
from boxsup.data.sources import resolve_classes
from boxsup.data.supervision import images_with_masks
from boxsup.data.synth import DEMO_CLASSES
from boxsup.data.voc import VOCDataset
from boxsup.proposals.generate import MAX_CANDIDATES, MAX_SIDE, build_store, generator, store_meta
from boxsup.proposals.selective_search import selective_search
from boxsup.proposals.store import ProposalStore
from boxsup.serving.image_inputs import resolve_images
from test_bad_input import ID, box, data, dataset, edit_xml, jpeg, pristine, raises_one_line, set_objects  # noqa: F401
from test_selective_search import _scene

H, W = 32, 64
# A ramp over the whole 16-bit range: read as anything but its high byte, most of it turns white or black.
RAMP = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 65535 // (H * W - 1)).astype(np.uint16)
RGB16 = np.dstack([RAMP, RAMP[::-1], 65535 - RAMP])
SQUARE = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)  # the size of the test set's images


def grey8(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


def write_cv2(path: Path, rgb_or_grey: np.ndarray) -> None:
    """Write through OpenCV, which keeps 16 bits per channel (BGR order on disk)."""
    array = rgb_or_grey[:, :, ::-1] if rgb_or_grey.ndim == 3 and rgb_or_grey.shape[2] == 3 else rgb_or_grey
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(array))


def write_palette_with_transparency(path: Path) -> np.ndarray:
    indices = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
    colours = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [250, 250, 0]], np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette(colours.ravel().tolist())
    im.save(path, transparency=bytes([0, 128, 255, 255]))  # a tRNS table: per-entry alpha
    return colours[indices]


def write_pillow(path: Path, array: np.ndarray, mode: str, format: str | None = None) -> None:
    Image.fromarray(array, mode=mode).save(path, format=format)


# Each case writes a file in the user's format and returns the 8-bit RGB picture it must read as.
READABLE = {
    "16-bit greyscale PNG (I;16)": ("g16.png", lambda p: (write_cv2(p, RAMP), grey8((RAMP >> 8).astype(np.uint8)))[1]),
    "16-bit RGB PNG (48 bits a pixel)": ("rgb16.png", lambda p: (write_cv2(p, RGB16), (RGB16 >> 8).astype(np.uint8))[1]),
    "16-bit RGBA PNG": ("rgba16.png", lambda p: (write_cv2(p, np.dstack([RGB16, RAMP])), (RGB16 >> 8).astype(np.uint8))[1]),
    "16-bit big-endian greyscale TIFF (I;16B)": (
        "g16b.tif", lambda p: (Image.frombytes("I;16B", (W, H), RAMP.astype(">u2").tobytes()).save(p),
                               grey8((RAMP >> 8).astype(np.uint8)))[1]),
    "16-bit PGM (Pillow mode I)": ("g16.pgm", lambda p: (write_cv2(p, RAMP), grey8((RAMP >> 8).astype(np.uint8)))[1]),
    "palette PNG with transparency": ("palette.png", write_palette_with_transparency),
    "greyscale with alpha (LA)": ("la.png", lambda p: (write_pillow(p, np.dstack([RAMP >> 8, RAMP >> 9]).astype(np.uint8), "LA"),
                                                        grey8((RAMP >> 8).astype(np.uint8)))[1]),
    "RGBA": ("rgba.png", lambda p: (write_pillow(p, np.dstack([RGB16 >> 8, RAMP >> 8]).astype(np.uint8), "RGBA"),
                                    (RGB16 >> 8).astype(np.uint8))[1]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(READABLE))
def test_high_bit_depth_and_alpha_pictures_read_as_their_8_bit_rgb(tmp_path, case):
    name, write = READABLE[case]
    path = tmp_path / name
    expected = write(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning per image either
        image = read_rgb(path)
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, expected)
    assert picture_size(path) == (W, H)


REFUSED = {
    "32-bit float TIFF (mode F)": (lambda p: write_pillow(p, RAMP.astype(np.float32) / 65535, "F"),
                                   r"f32.tif: cannot read a 32-bit floating-point image as 8-bit RGB"),
    "32-bit integer TIFF beyond 16 bits": (lambda p: write_pillow(p, RAMP.astype(np.int32) * 1000, "I"),
                                           r"f32.tif: cannot read a 32-bit integer image with values beyond 0..65535"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_pictures_without_an_8_bit_reading_are_refused_in_one_line(tmp_path, case):
    write, pattern = REFUSED[case]
    write(tmp_path / "f32.tif")
    raises_one_line(lambda: read_rgb(tmp_path / "f32.tif"), pattern)


def test_a_float_picture_is_refused_from_its_header_and_left_out_of_training(data, caplog):
    write_pillow(jpeg(data), SQUARE.astype(np.float32) / 65535, "F", "TIFF")  # a TIFF under VOC's .jpg name
    ds = dataset(data)
    raises_one_line(lambda: ds.image_size(ID), rf"{ID}.jpg: cannot read a 32-bit floating-point image")
    with caplog.at_level(logging.WARNING):
        kept = ds.load_annotations(skip_bad=True)
    assert ID not in [a.image_id for a in kept]  # never a black training picture
    assert ds.skips.counts["image left out: bad annotation, image or mask"] == 1


def test_a_16_bit_training_image_trains_on_its_picture(data):
    png16 = data / "g16.png"
    write_cv2(png16, SQUARE)
    jpeg(data).write_bytes(png16.read_bytes())  # VOC names every image .jpg; the reader goes by the content
    ds = dataset(data)
    assert ds.annotation(ID).width == 48
    np.testing.assert_array_equal(ds.image(ID), grey8((SQUARE >> 8).astype(np.uint8)))


def test_predict_maps_a_16_bit_png_as_its_8_bit_twin_and_names_a_float_tiff(tmp_path, capsys):
    from tiny_checkpoints import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "checkpoint.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    write_cv2(folder / "deep.png", RGB16)
    Image.fromarray((RGB16 >> 8).astype(np.uint8)).save(folder / "twin.png")
    write_pillow(folder / "float.tif", RAMP.astype(np.float32), "F")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out)]) == 1
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 label maps written, 1 unreadable image" in summary and "float.tif" in summary
    assert sorted(p.name for p in out.glob("*.png")) == ["deep.png", "twin.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "deep.png")), np.asarray(Image.open(out / "twin.png")))


# ---------------------------------------------------------------- text files: byte-order marks, invisible characters


def write_bom(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8-sig")  # as Notepad saves "UTF-8 with BOM"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")


def test_a_classes_txt_with_a_byte_order_mark_reads_its_names(data):
    write_bom(data / "classes.txt", "\n".join(DEMO_CLASSES) + "\n")
    classes = resolve_classes(load_config(None, [f"data.root={data}", "data.classes=auto"]))
    assert classes == DEMO_CLASSES
    ds = dataset(data)
    assert len(ds.load_annotations(skip_bad=False)) == len(ds.ids)  # 'star' boxes are star boxes


def test_split_mask_and_image_lists_with_a_byte_order_mark_read_their_first_line(data, tmp_path):
    write_bom(data / "ImageSets" / "Segmentation" / "train.txt", f"{ID}\nsynth_000002\n")
    ds = dataset(data)
    assert ds.ids == [ID, "synth_000002"] and ds.annotation(ID).image_id == ID
    mask_list = tmp_path / "masks.txt"
    write_bom(mask_list, f"{ID}\n")
    assert images_with_masks(ds.ids, "semi", seed=0, mask_list=str(mask_list)) == {ID}
    image_list = tmp_path / "images.txt"
    write_bom(image_list, f"{jpeg(data)}\n")
    assert resolve_images([str(image_list)]) == [jpeg(data)]


def test_an_invisible_character_in_a_class_name_is_shown_escaped(data):
    (data / "classes.txt").write_text("star\u200b\nring\ncross\ntriangle\ncrescent\n")  # a zero-width space
    classes = resolve_classes(load_config(None, [f"data.root={data}", "data.classes=auto"]))
    set_objects(data, box("star", 1, 1, 9, 9))
    error = raises_one_line(lambda: VOCDataset(data, "train", classes).annotation(ID), r"unknown class 'star'")
    assert "(known: 'star\\u200b', ring, cross" in str(error)


def test_a_class_list_that_is_not_utf8_is_one_line(data):
    (data / "classes.txt").write_bytes("étoile\nring\n".encode("latin-1"))
    raises_one_line(lambda: resolve_classes(load_config(None, [f"data.root={data}", "data.classes=auto"])),
                    r"classes.txt: class list is not UTF-8 text .*save it as UTF-8")


# ---------------------------------------------------------------- split lists: an id with a space


def test_an_id_with_a_space_is_refused_with_its_line_and_deeplab_pairs_still_read(data):
    split = data / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(f"{ID}\n\nsynth 000002\n")
    raises_one_line(lambda: dataset(data), r"train.txt:3: 'synth 000002' is not one image id")
    split.write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in (ID, "synth_000002")))
    assert dataset(data).ids == [ID, "synth_000002"]  # DeepLab's train_aug.txt: two paths a line


# ---------------------------------------------------------------- config files


@pytest.mark.parametrize("text, where, problem", [
    ("data:\n  root: /d\n train: {lr: 1}\n", "line 3, column 2", "expected <block end>"),
    ("data: {root: /d}\nseed:\t1\n", "line 2, column 6", "found character '\\\\t' that cannot start any token"),
    ("data: [unclosed\n", "line 2, column 1", r"expected ',' or '\]'.*\(while parsing a flow sequence at line 1, column 7\)"),
])  # fmt: skip
def test_a_yaml_mistake_names_its_line_and_column(tmp_path, text, where, problem):
    (tmp_path / "c.yaml").write_text(text)
    raises_one_line(lambda: load_config(tmp_path / "c.yaml"), rf"c.yaml: not valid YAML at {where}: {problem}")


# ---------------------------------------------------------------- proposals on photos larger than VOC's


def test_proposals_max_side_is_a_checked_config_key_defaulting_to_the_library():
    assert DEFAULTS["proposals"]["max_side"] == MAX_SIDE >= 640  # VOC (500 px) and COCO (640 px) as they are
    assert DEFAULTS["proposals"]["max_candidates"] == MAX_CANDIDATES  # one default, the library's and the config's
    raises_one_line(lambda: load_config(None, ["data.root=/d", "proposals.max_side=16"]),
                    r"config key proposals.max_side: must be >= 32, got 16")


def test_an_image_within_max_side_gets_the_pool_of_its_own_pixels():
    image = _scene(500)[0][:375]  # a VOC-sized picture
    pool = generator("ss", max_candidates=300, seed=3, max_side=500)(image, np.zeros((0, 4)))
    alone = selective_search(image, max_candidates=300, seed=3)
    np.testing.assert_array_equal(pool.atoms, alone.atoms)
    assert (pool.membership != alone.membership).nnz == 0


@pytest.mark.parametrize("method", ["ss", "grabcut", "rectangles"])
def test_an_image_beyond_max_side_gets_its_copys_pool_at_its_own_size(method):
    image, _ = _scene(192)
    boxes = np.array([[20, 30, 71, 101], [100, 90, 180, 170]])
    big = cv2.resize(image, (384, 384), interpolation=cv2.INTER_NEAREST)  # each pixel a 2x2 block
    pool = generator(method, max_candidates=300, seed=3, max_side=192)(big, boxes * 2)
    small = generator(method, max_candidates=300, seed=3, max_side=192)(image, boxes)
    assert pool.shape == (384, 384) and pool.n_candidates == small.n_candidates > 0
    np.testing.assert_array_equal(pool.areas(), 4 * small.areas())  # the same candidates, scaled back
    np.testing.assert_array_equal(pool.boxes(), 2 * small.boxes())


def test_a_store_built_with_another_max_side_is_refused(data):
    ds = dataset(data)
    store = ProposalStore(data.parent / "store")
    build_store(ds, store, "ss", max_candidates=50, progress=False, ids=[ID], max_side=320)
    assert json.loads((data.parent / "store" / "meta.json").read_text())["max_side"] == 320
    raises_one_line(lambda: store.check_origin(store_meta(ds, "ss", 50, 0, max_side=640)),
                    r"meta.json: store holds 'ss' proposals .* at max_side 320 \(max_candidates 50\), not .* at max_side 640 ")
    store.check_origin(store_meta(ds, "ss", 50, 0, max_side=320))


CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import cv2
    from boxsup.data.synth import DEMO_CLASSES
    from boxsup.data.voc import VOCDataset
    from boxsup.proposals.generate import build_store
    from boxsup.proposals.store import ProposalStore

    cv2.setNumThreads(1)
    root, image_id = Path(sys.argv[1]), sys.argv[2]
    dataset = VOCDataset(root, "train", DEMO_CLASSES)
    size = dataset.annotation(image_id)  # the header checks pass: 4000x3000 as its XML says
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 29), resource.RLIM_INFINITY))  # + 1.5 GiB of address space
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = ProposalStore(root.parent / "store")
    report = build_store(dataset, store, "ss", max_candidates=200, progress=False, ids=[image_id])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    pool = store.load(image_id, expected_shape=(size.height, size.width))
    print(json.dumps({"made": report.made, "grown_mib": grown / 1024, "shape": pool.shape, "candidates": pool.n_candidates}))
""")


def test_selective_search_on_a_12_megapixel_jpeg_stays_within_memory(data):
    """Before max_side, Selective Search grew by 2.5 GB on this photo (and took 40 s); now by some 200 MB."""
    rng = np.random.default_rng(0)
    blobs = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(blobs).resize((4000, 3000), Image.BILINEAR).save(jpeg(data), quality=90)
    edit_xml(data, "<width>48</width>", "<width>4000</width>")
    edit_xml(data, "<height>48</height>", "<height>3000</height>")
    (data / "SegmentationClass" / f"{ID}.png").unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), ID], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["made"] == 1 and result["shape"] == [3000, 4000] and result["candidates"] > 0
    assert result["grown_mib"] < 700, result
