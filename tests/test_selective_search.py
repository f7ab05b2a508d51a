"""Selective Search: a valid, deterministic, duplicate-free pool whose candidates find drawn objects."""

import numpy as np
import pytest

from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.quality import mask_ious
from boxsup.proposals.selective_search import MODES, selective_search


def _scene(size: int = 96) -> tuple[np.ndarray, list[np.ndarray]]:
    """A striped, noisy background with a red disc and a checkered blue rectangle; (image, object masks)."""
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[:size, :size]
    stripes = 20.0 * np.sin((xs + 0.5 * ys) / 3.0)
    image = np.dstack([120 + stripes, 140 + stripes, 110 + stripes]) + rng.normal(0, 8, (size, size, 3))
    disc = (xs - 0.3 * size) ** 2 + (ys - 0.35 * size) ** 2 < (0.18 * size) ** 2
    rect = (xs > 0.55 * size) & (xs < 0.9 * size) & (ys > 0.5 * size) & (ys < 0.85 * size)
    checks = ((xs // 4 + ys // 4) % 2) * 40.0
    image[disc] = (210, 40, 40)
    image[rect] = np.stack([30 + checks, 50 + checks, 190 + 0 * checks], axis=-1)[rect]
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return image, [disc, rect]


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.fixture(scope="module")
def pool(scene) -> CandidatePool:
    return selective_search(scene[0], max_candidates=None, seed=3)


def _rows(pool: CandidatePool) -> list[tuple[int, ...]]:
    m = pool.membership
    return [tuple(sorted(m.indices[m.indptr[i] : m.indptr[i + 1]].tolist())) for i in range(pool.n_candidates)]


def test_valid_pool_over_image(scene, pool):
    image, _ = scene
    assert pool.shape == image.shape[:2]
    assert pool.atoms.dtype == np.int32
    np.testing.assert_array_equal(np.unique(pool.atoms), np.arange(pool.n_atoms))
    assert pool.membership.shape == (pool.n_candidates, pool.n_atoms)
    assert pool.n_candidates > 50


def test_candidates_non_empty_and_distinct(pool):
    assert (pool.areas() > 0).all()
    rows = _rows(pool)
    assert len(set(rows)) == len(rows)


def test_deterministic_for_a_seed(scene, pool):
    again = selective_search(scene[0], max_candidates=None, seed=3)
    np.testing.assert_array_equal(again.atoms, pool.atoms)
    assert (again.membership != pool.membership).nnz == 0
    other = selective_search(scene[0], max_candidates=None, seed=4)
    assert set(_rows(other)) == set(_rows(pool))  # the seed only reorders the same candidates
    assert _rows(other) != _rows(pool)


def test_each_drawn_object_is_found(scene, pool):
    _, objects = scene
    for mask in objects:
        assert mask_ious(pool, mask).max() >= 0.7


def test_whole_image_is_a_candidate(pool):
    assert (pool.areas() == pool.atoms.size).any()


def test_max_candidates_keeps_the_best_ranked(scene, pool):
    top = selective_search(scene[0], max_candidates=25, seed=3)
    assert top.n_candidates == 25
    assert _rows(top) == _rows(pool)[:25]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_finds_the_disc(scene, mode):
    image, (disc, _) = scene
    assert mask_ious(selective_search(image[::2, ::2], mode=mode), disc[::2, ::2]).max() >= 0.7


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 3), (8, 8, 4), (1, 1, 3), (3, 40, 3)])
def test_grey_tiny_and_rgba_images(shape):
    image = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    pool = selective_search(image, max_candidates=100)
    assert pool.shape == shape[:2]
    assert 1 <= pool.n_candidates <= 100
    assert (pool.areas() > 0).all()


def test_flat_image_gives_the_whole_image():
    pool = selective_search(np.full((20, 30, 3), 90, np.uint8))
    assert pool.n_candidates == 1 and pool.areas()[0] == 600


def test_bad_arguments_are_refused():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="mode"):
        selective_search(image, mode="slow")
    with pytest.raises(ValueError, match="max_candidates"):
        selective_search(image, max_candidates=0)
    with pytest.raises(ValueError, match="uint8"):
        selective_search(image.astype(np.float32))
