"""Selective Search (Uijlings et al., IJCV 2013) producing mask candidates as a CandidatePool.

Each *strategy* runs Felzenszwalb-Huttenlocher superpixels of one colour space at one scale k,
then greedily merges the two most similar adjacent regions until one region is left; every
superpixel and every merged region is a candidate. The similarity sums the chosen terms of the
paper: colour (25-bin histograms per channel), texture (8 orientations x 10 magnitude bins per
channel), size and fill, each in [0, 1].

All strategies are expressed over one atom map: the overlay cells of every superpixel map used.
Within one merge tree the atoms of any node are a contiguous range of a depth-first ordering of
its leaves, so candidates cost two integers until the few kept ones are written out. Duplicates
across strategies are found by hashing atom sets (sum of random 64-bit atom weights); candidates
are ranked as in the paper, by position in their hierarchy (the full image is 1) times a random
number, and the best ``max_candidates`` are kept.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp

from boxsup.proposals.pool import CandidatePool, atom_boxes


@dataclass(frozen=True)
class Similarity:
    """Which similarity terms a grouping strategy sums."""

    colour: bool
    texture: bool
    size: bool
    fill: bool


CTSF = Similarity(colour=True, texture=True, size=True, fill=True)
TSF = Similarity(colour=False, texture=True, size=True, fill=True)
FILL = Similarity(colour=False, texture=False, size=False, fill=True)
SIZE = Similarity(colour=False, texture=False, size=True, fill=False)


@dataclass(frozen=True)
class Mode:
    """A diversification setting: every (colour space, k, similarity) combination is one strategy."""

    colour_spaces: tuple[str, ...]
    ks: tuple[int, ...]
    similarities: tuple[Similarity, ...]


MODES = {  # Table 5 of the paper
    "single": Mode(("hsv",), (100,), (CTSF,)),
    "fast": Mode(("hsv", "lab"), (50, 100), (CTSF, TSF)),
    "quality": Mode(("hsv", "lab", "rgi", "h", "i"), (50, 100, 150, 300), (CTSF, TSF, FILL, SIZE)),
}

REFERENCE_AREA = 500 * 375  # image area (a VOC image) at which k and min_size are the paper's
COLOUR_BINS = 25
ORIENTATIONS = 8
MAGNITUDE_BINS = 10


@dataclass
class _Regions:
    """Initial regions of one superpixel map: L1-normalised [colour | texture] histograms, sizes, boxes."""

    hist: np.ndarray  # (n, D) float64
    sizes: np.ndarray  # (n,) pixels
    boxes: np.ndarray  # (n, 4) x0, y0, x1, y1 end-exclusive
    n_colour_bins: int


@dataclass
class _Hierarchy:
    """One merge tree: node i covers atoms ``order[start[i]:stop[i]]``; ``rank`` orders candidates."""

    order: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    rank: np.ndarray


def selective_search(
    image: np.ndarray, mode: str = "fast", max_candidates: int | None = 2000, seed: int = 0
) -> CandidatePool:
    """Selective Search segments of an RGB uint8 image (grey-scale accepted), best-ranked first.

    ``mode`` is "single", "fast" or "quality" (the paper's settings); ``seed`` fixes the random
    ranking; ``max_candidates=None`` keeps every distinct candidate.
    """
    if mode not in MODES:
        raise ValueError(f"unknown selective search mode {mode!r} (choose from {', '.join(MODES)})")
    if max_candidates is not None and max_candidates < 1:
        raise ValueError(f"max_candidates must be positive or None, got {max_candidates}")
    rgb = _as_rgb(image)
    setting = MODES[mode]
    converted = {name: _colour_space(rgb, name) for name in setting.colour_spaces}
    maps = [(name, _superpixels(converted[name], k)) for name in setting.colour_spaces for k in setting.ks]
    atoms, owners = _overlay([labels for _, labels in maps])
    n_atoms = len(owners[0])
    atom_sizes = np.bincount(atoms.ravel(), minlength=n_atoms).astype(np.float64)
    per_atom_boxes = atom_boxes(atoms, n_atoms)
    atom_pairs = _adjacent_pairs(atoms)
    rng = np.random.default_rng(seed)
    hierarchies = []
    n_ks = len(setting.ks)
    for space, name in enumerate(setting.colour_spaces):  # one space's histograms in memory at a time
        atom_hist = _atom_histograms(converted[name], atoms, n_atoms)
        n_colour_bins = converted[name].shape[2] * COLOUR_BINS
        for owner in owners[space * n_ks : (space + 1) * n_ks]:
            regions = _regions(owner, atom_sizes, per_atom_boxes, atom_hist, n_colour_bins)
            pairs = _region_pairs(atom_pairs, owner)
            for similarity in setting.similarities:
                children = _group(regions, pairs, float(rgb.shape[0] * rgb.shape[1]), similarity)
                hierarchies.append(_hierarchy(children, owner, rng))
    return _pool(atoms, hierarchies, max_candidates, rng)


# ---- image preparation -----------------------------------------------------------------------
def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from an RGB, RGBA or grey-scale uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"selective search needs a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"selective search needs an (H, W), (H, W, 3) or (H, W, 4) image, got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _colour_space(rgb: np.ndarray, name: str) -> np.ndarray:
    """The image in one of the paper's colour spaces, (H, W, C) uint8 with every channel over 0..255."""
    if name == "hsv":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    if name == "lab":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    if name == "h":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)[:, :, :1].copy()
    if name == "i":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    if name == "rgi":
        total = rgb.sum(axis=2, dtype=np.float32)
        rg = rgb[:, :, :2] * (255.0 / np.maximum(total, 1.0))[:, :, None]
        return np.dstack([rg, total / 3.0]).round().astype(np.uint8)
    raise ValueError(f"unknown colour space {name!r}")


def _superpixels(image: np.ndarray, k: int) -> np.ndarray:
    """Felzenszwalb-Huttenlocher superpixels, ids 0..n-1, with k and min_size scaled to the image size.

    The paper's k (and min_size = k) suit VOC-sized images; both follow the image's linear size
    so that small images are not reduced to a handful of regions nor large ones to thousands.
    OpenCV's implementation of the algorithm is used: twice as fast as scikit-image's.
    """
    h, w = image.shape[:2]
    scaled = k * np.sqrt(h * w / REFERENCE_AREA)
    segmenter = cv2.ximgproc.segmentation.createGraphSegmentation(sigma=0.8, k=scaled, min_size=round(scaled) or 1)
    return segmenter.processImage(image).astype(np.int64)


def _overlay(label_maps: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Cells of the overlay of several label maps: (atom map, each map's label of every atom)."""
    key = np.zeros(label_maps[0].size, dtype=np.int64)
    for labels in label_maps:
        n = int(labels.max()) + 1
        if int(key.max()) >= np.iinfo(np.int64).max // n:
            key = np.unique(key, return_inverse=True)[1].ravel()
        key = key * n + labels.ravel()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    atoms = inverse.reshape(label_maps[0].shape).astype(np.int32)
    return atoms, [labels.ravel()[first] for labels in label_maps]


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Distinct (a, b), a < b, of labels that touch horizontally or vertically, shape (P, 2)."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    return _distinct_pairs(a, b)


def _distinct_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct unordered pairs of unequal labels, as (min, max) rows."""
    differ = a != b
    lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    n = int(hi.max()) + 1 if hi.size else 1
    key = np.unique(lo * n + hi)
    return np.stack([key // n, key % n], axis=1)


def _region_pairs(atom_pairs: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Adjacent regions of one superpixel map, from the adjacency of its atoms."""
    return _distinct_pairs(owner[atom_pairs[:, 0]], owner[atom_pairs[:, 1]])


# ---- region descriptors ----------------------------------------------------------------------
def _texture_codes(channel: np.ndarray) -> np.ndarray:
    """Per-pixel joint (orientation, magnitude) bin of the Gaussian derivative, 0..79.

    Orientation takes 8 sectors of the full circle, magnitude 10 bins up to the channel's 99th
    percentile; pixels of the lowest magnitude bin have no meaningful orientation and share one bin.
    """
    smooth = cv2.GaussianBlur(channel.astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=1)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=1)
    magnitude, angle = cv2.cartToPolar(gx, gy)
    top = max(float(np.percentile(magnitude, 99)), 1e-6)
    mag_bin = np.minimum((magnitude * (MAGNITUDE_BINS / top)).astype(np.int64), MAGNITUDE_BINS - 1)
    orient = np.minimum((angle * (ORIENTATIONS / (2 * np.pi))).astype(np.int64), ORIENTATIONS - 1)
    orient[mag_bin == 0] = 0
    return (orient * MAGNITUDE_BINS + mag_bin).ravel()


def _atom_histograms(image: np.ndarray, atoms: np.ndarray, n_atoms: int) -> np.ndarray:
    """Unnormalised [colour | texture] pixel counts of every atom, (A, 25C + 80C)."""
    channels = image.shape[2]
    tex_bins = ORIENTATIONS * MAGNITUDE_BINS
    n_bins = channels * (COLOUR_BINS + tex_bins)
    pixels = image.reshape(-1, channels).astype(np.int64)
    codes = [(pixels[:, c] * COLOUR_BINS >> 8) + c * COLOUR_BINS for c in range(channels)]
    offset = channels * COLOUR_BINS
    codes += [_texture_codes(image[:, :, c]) + offset + c * tex_bins for c in range(channels)]
    index = atoms.ravel().astype(np.int64) * n_bins + np.stack(codes)
    return np.bincount(index.ravel(), minlength=n_atoms * n_bins).reshape(n_atoms, n_bins)


def _regions(
    owner: np.ndarray, atom_sizes: np.ndarray, per_atom_boxes: np.ndarray, atom_hist: np.ndarray, n_colour_bins: int
) -> _Regions:
    """Descriptors of the superpixels of one map (``owner``: each atom's superpixel), summed over atoms."""
    n = int(owner.max()) + 1
    member = sp.csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(n, len(owner)))
    hist = member @ atom_hist
    hist[:, :n_colour_bins] /= hist[:, :n_colour_bins].sum(axis=1, keepdims=True)
    hist[:, n_colour_bins:] /= hist[:, n_colour_bins:].sum(axis=1, keepdims=True)
    by_region = np.argsort(owner, kind="stable")
    firsts = np.searchsorted(owner[by_region], np.arange(n))
    boxes = per_atom_boxes[by_region].astype(np.float64)
    corners = np.column_stack(
        [
            np.minimum.reduceat(boxes[:, 0], firsts),
            np.minimum.reduceat(boxes[:, 1], firsts),
            np.maximum.reduceat(boxes[:, 2], firsts),
            np.maximum.reduceat(boxes[:, 3], firsts),
        ]
    )
    return _Regions(hist, member @ atom_sizes, corners, n_colour_bins)


# ---- hierarchical grouping -------------------------------------------------------------------
def _similarity(
    feat: np.ndarray,
    size: np.ndarray,
    box: np.ndarray,
    a: np.ndarray,
    b: np.ndarray | int,
    area: float,
    similarity: Similarity,
) -> np.ndarray:
    """Similarity of regions ``a`` (indices) with ``b`` (indices or one index) under a strategy."""
    joint = size[a] + size[b]
    total = np.zeros_like(joint)
    if feat.shape[1]:
        total += np.minimum(feat[a], feat[b]).sum(axis=-1)
    if similarity.size:
        total += 1.0 - joint / area
    if similarity.fill:
        lo, hi = np.minimum(box[a, :2], box[b, :2]), np.maximum(box[a, 2:], box[b, 2:])
        bbox = (hi - lo).prod(axis=-1)
        total += 1.0 - (bbox - joint) / area
    return total


def _features(regions: _Regions, similarity: Similarity) -> np.ndarray:
    """The histogram columns whose intersection a strategy uses (colour, texture, both or none)."""
    c = regions.n_colour_bins
    if similarity.colour and similarity.texture:
        return regions.hist
    if similarity.colour:
        return regions.hist[:, :c]
    if similarity.texture:
        return regions.hist[:, c:]
    return regions.hist[:, :0]


def _group(regions: _Regions, pairs: np.ndarray, area: float, similarity: Similarity) -> np.ndarray:
    """Greedy grouping until one region is left; returns the two children of each new region, (n-1, 2).

    Region n + m is created by merge m. A heap holds candidate pairs; pairs whose regions were
    merged away are skipped when popped. The region adjacency graph of an image is connected,
    so merging ends with the whole image.
    """
    n = len(regions.sizes)
    total = 2 * n - 1
    base = _features(regions, similarity)
    feat = np.empty((total, base.shape[1]))
    feat[:n] = base
    size = np.empty(total)
    size[:n] = regions.sizes
    box = np.empty((total, 4))
    box[:n] = regions.boxes
    a, b = pairs[:, 0], pairs[:, 1]
    heap = list(zip((-_similarity(feat, size, box, a, b, area, similarity)).tolist(), a.tolist(), b.tolist()))
    heapq.heapify(heap)
    neighbours: list[set[int]] = [set() for _ in range(total)]
    for i, j in pairs.tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
    alive = [True] * total
    children = np.empty((n - 1, 2), dtype=np.int64)
    for new in range(n, total):
        i, j = _pop_live_pair(heap, alive)
        alive[i] = alive[j] = False
        children[new - n] = i, j
        _merge_descriptors(feat, size, box, i, j, new)
        around = neighbours[i] | neighbours[j]
        around -= {i, j}
        for m in around:
            neighbours[m] -= {i, j}
            neighbours[m].add(new)
        neighbours[new] = around
        if around:
            others = np.fromiter(around, dtype=np.int64, count=len(around))
            sims = _similarity(feat, size, box, others, new, area, similarity)
            for s, m in zip(sims.tolist(), others.tolist()):
                heapq.heappush(heap, (-s, m, new))
    return children


def _pop_live_pair(heap: list, alive: list[bool]) -> tuple[int, int]:
    """The most similar pair whose two regions both still exist."""
    while True:
        _, i, j = heapq.heappop(heap)
        if alive[i] and alive[j]:
            return i, j


def _merge_descriptors(feat: np.ndarray, size: np.ndarray, box: np.ndarray, i: int, j: int, new: int) -> None:
    """Descriptors of the union of regions i and j: size-weighted histograms, joint box."""
    si, sj = size[i], size[j]
    size[new] = si + sj
    feat[new] = (feat[i] * si + feat[j] * sj) / (si + sj)
    box[new, :2] = np.minimum(box[i, :2], box[j, :2])
    box[new, 2:] = np.maximum(box[i, 2:], box[j, 2:])


# ---- candidates ------------------------------------------------------------------------------
def _hierarchy(children: np.ndarray, owner: np.ndarray, rng: np.random.Generator) -> _Hierarchy:
    """Atom ranges and ranking values of every node of a merge tree.

    Laying leaves out depth-first makes every node's atoms contiguous; a node's rank value is its
    position counted from the root (the root is 1) times a uniform random number.
    """
    n = len(children) + 1
    counts = np.bincount(owner, minlength=n).tolist() + [0] * (n - 1)
    pairs = children.tolist()
    for m, (i, j) in enumerate(pairs):
        counts[n + m] = counts[i] + counts[j]
    start = [0] * (2 * n - 1)
    for m in range(n - 2, -1, -1):
        i, j = pairs[m]
        start[i] = start[n + m]
        start[j] = start[n + m] + counts[i]
    start_arr = np.array(start, dtype=np.int64)
    order = np.argsort(start_arr[owner], kind="stable")
    position = np.arange(2 * n - 1, 0, -1)
    return _Hierarchy(order, start_arr, start_arr + np.array(counts), position * rng.random(2 * n - 1))


def _pool(
    atoms: np.ndarray, hierarchies: list[_Hierarchy], max_candidates: int | None, rng: np.random.Generator
) -> CandidatePool:
    """The distinct candidates of all hierarchies, best rank first, at most ``max_candidates``.

    A candidate's key is the sum of random 64-bit weights of its atoms (a prefix-sum difference
    over its range): equal atom sets share a key, and distinct ones collide with probability
    about n^2 / 2^65 (~1e-11 for 20,000 candidates). Of equal keys the best-ranked is kept.
    """
    n_atoms = len(hierarchies[0].order)
    offsets = np.arange(len(hierarchies)) * n_atoms
    order = np.concatenate([h.order for h in hierarchies])
    start = np.concatenate([h.start + o for h, o in zip(hierarchies, offsets)])
    stop = np.concatenate([h.stop + o for h, o in zip(hierarchies, offsets)])
    rank = np.concatenate([h.rank for h in hierarchies])
    weights = rng.integers(0, np.iinfo(np.uint64).max, n_atoms, dtype=np.uint64, endpoint=True)
    prefix = np.concatenate([[np.uint64(0)], np.cumsum(weights[order], dtype=np.uint64)])
    by_rank = np.argsort(rank, kind="stable")
    _, first = np.unique((prefix[stop] - prefix[start])[by_rank], return_index=True)
    keep = by_rank[np.sort(first)][:max_candidates]
    lengths = stop[keep] - start[keep]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
    indices = order[np.repeat(start[keep], lengths) + within]
    membership = sp.csr_matrix(
        (np.ones(len(indices), np.float32), indices, indptr), shape=(len(keep), n_atoms)
    )
    return CandidatePool(atoms, membership)
