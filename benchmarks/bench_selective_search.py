"""Speed of our Selective Search (masks) against OpenCV-contrib's (boxes), per 500x375 image on one core.

    python benchmarks/bench_selective_search.py                 # synthetic demo-style images
    python benchmarks/bench_selective_search.py --skimage       # scikit-image's bundled photographs
    python benchmarks/bench_selective_search.py --images DIR    # every JPEG/PNG of DIR

Images are resized to --size. Prints a markdown table: seconds and candidates per image.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from boxsup.data.synth import synth_sample  # noqa: E402
from boxsup.proposals.selective_search import selective_search  # noqa: E402

SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
    "immunohistochemistry", "camera", "coins", "grass", "gravel", "brick",
)  # fmt: skip


def synthetic_images(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Demo-dataset scenes (textured shapes on cluttered backgrounds) rendered square, cropped to size."""
    w, h = size
    return [synth_sample(seed, i, size=max(w, h)).image[:h, :w] for i in range(n)]


def skimage_images(size: tuple[int, int]) -> list[np.ndarray]:
    """scikit-image's bundled photographs as RGB, resized."""
    from skimage import data

    return [_rgb_resized(getattr(data, name)(), size) for name in SKIMAGE_PHOTOS]


def folder_images(folder: Path, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The first n JPEG/PNG images of a folder (sorted by name) as RGB, resized."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not paths:
        raise SystemExit(f"{folder}: no .jpg/.jpeg/.png image")
    return [_rgb_resized(cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1], size) for p in paths]


def _rgb_resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.ndim == 2:
        image = np.dstack([image] * 3)
    return np.ascontiguousarray(cv2.resize(image[:, :, :3], size, interpolation=cv2.INTER_AREA))


def opencv_fast(image: np.ndarray) -> int:
    """OpenCV-contrib Selective Search, fast mode, on an RGB image; returns the number of boxes."""
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))
    search.switchToSelectiveSearchFast()
    return len(search.process())


def measure(methods: dict[str, Callable[[np.ndarray], int]], images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per method, (wall s, CPU s, candidates) of each image, shape (n_images, 3).

    The methods alternate image by image, after one untimed warm-up call each, so that any load
    from other processes falls on both alike.
    """
    for run in methods.values():
        run(images[0])
    rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name in methods}
    for image in images:
        for name, run in methods.items():
            wall, cpu = time.perf_counter(), time.process_time()
            count = run(image)
            rows[name].append((time.perf_counter() - wall, time.process_time() - cpu, count))
    return {name: np.array(r) for name, r in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, help="folder of JPEG/PNG images (default: synthetic images)")
    source.add_argument("--skimage", action="store_true", help="use scikit-image's bundled photographs")
    parser.add_argument("--n-images", type=int, default=20, help="synthetic images to make, or folder images to read")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--max-candidates", type=int, default=2000, help="cap of our candidates; 0: no cap")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    size = tuple(args.size)
    if args.images:
        images, what = folder_images(args.images, args.n_images, size), f"images of {args.images}"
    elif args.skimage:
        images, what = skimage_images(size), "scikit-image photographs"
    else:
        images, what = synthetic_images(args.n_images, size, args.seed), "synthetic images"
    cap = args.max_candidates or None
    methods = {
        f"boxsup selective_search, fast (masks, max {cap})": lambda im: selective_search(
            im, mode="fast", max_candidates=cap, seed=args.seed
        ).n_candidates,
        "OpenCV-contrib SelectiveSearchSegmentation, fast (boxes)": opencv_fast,
    }
    print(f"{len(images)} {what}, {size[0]}x{size[1]}, one core\n")
    print("| method | mean s / image | median s / image | mean CPU s / image | mean candidates / image "
          "| median candidates / image |")
    print("|---|---|---|---|---|---|")
    for name, r in measure(methods, images).items():
        wall, cpu, counts = r.T
        print(f"| {name} | {wall.mean():.3f} | {np.median(wall):.3f} | {cpu.mean():.3f} | {counts.mean():.0f} "
              f"| {np.median(counts):.0f} |")


if __name__ == "__main__":
    main()
