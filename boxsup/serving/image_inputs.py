"""Which images ``boxsup predict`` reads: folders, glob patterns, list files, single image files.

A list file holds one image path per line (blank lines and ``#`` comments are skipped); relative
paths are read against the list file's folder. A listed file that is missing is not a mistake in
the command but one unreadable image: it is kept here, and counted and named when it is read.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from boxsup.errors import BoxSupError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GLOB_CHARS = ("*", "?", "[")


def resolve_images(specs: Sequence[str]) -> list[Path]:
    """Every image the ``--images`` arguments name, in the order given (each folder and glob sorted)."""
    paths: list[Path] = []
    for spec in specs:
        paths += _resolve_one(spec)
    if not paths:
        raise BoxSupError(f"--images {' '.join(specs)}: no images there")
    return paths


def output_names(paths: Sequence[Path], out: Path) -> list[Path]:
    """``<out>/<image stem>.png`` per image; refused when two images would write one file, or one would
    overwrite an input."""
    seen: dict[str, Path] = {}
    inputs = {p.resolve() for p in paths}
    targets = []
    for path in paths:
        key = path.stem.casefold()  # a case-insensitive file system would merge A.png and a.png
        if key in seen:
            raise BoxSupError(f"{seen[key]} and {path} would both write {out / (path.stem + '.png')}; "
                              "rename one or predict them into different --out folders")
        seen[key] = path
        target = out / f"{path.stem}.png"
        if target.resolve() in inputs:
            raise BoxSupError(f"{target}: is an input image and would be overwritten; choose another --out")
        targets.append(target)
    return targets


def _resolve_one(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise BoxSupError(f"{path}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
        return found
    if path.is_file():
        return [path] if path.suffix.lower() in IMAGE_SUFFIXES else _read_list(path)
    if any(c in spec for c in _GLOB_CHARS):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise BoxSupError(f"{spec}: no file matches this pattern")
        return found
    raise BoxSupError(f"{spec}: no such folder, image, list file or pattern")


def _read_list(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors write, is no part of the first path
    except UnicodeDecodeError:
        raise BoxSupError(f"{path}: neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a text list of image paths") from None
    lines = [line.strip() for line in text.splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise BoxSupError(f"{path}: the image list is empty")
    return [p if p.is_absolute() else path.parent / p for p in (Path(e).expanduser() for e in entries)]
