"""Choosing one candidate per box: uniform among the k lowest costs (Sec. 4.3), seeded per image.

Each image's random stream is keyed on (seed, round, image id), so the choice of an image does not
depend on which worker or actor handles it, nor on the order images are processed.
"""

from __future__ import annotations

import zlib

import numpy as np


def image_rng(seed: int, round_index: int, image_id: str) -> np.random.Generator:
    """The random stream of one image in one label-update round."""
    return np.random.default_rng([seed, round_index, zlib.crc32(image_id.encode("utf-8"))])


def sample_lowest_k(costs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """For each column (box) of ``costs`` (C, B), a row index drawn uniformly among the k lowest.

    Ties are broken by candidate order (stable sort), so the k-set is well defined; k=1 is the
    greedy "without sampling" variant. Infinite costs (ineligible candidates) are drawn only
    when a box has no finite one. Returns (B,) int indices.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_candidates, n_boxes = costs.shape
    if n_candidates == 0:
        raise ValueError("no candidates to choose from")
    order = np.argsort(costs, axis=0, kind="stable")[: min(k, n_candidates)]  # (k, B)
    eligible = np.clip(np.isfinite(costs).sum(axis=0), 1, order.shape[0])  # per-box k
    picks = np.floor(rng.random(n_boxes) * eligible).astype(np.int64)
    return order[picks, np.arange(n_boxes)]
