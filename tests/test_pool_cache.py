"""Cached pools: the packed form (same sums, same label maps as the CSR form) and the byte-bounded cache."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cache

import numpy as np
import pytest
import scipy.sparse as sp

from boxsup.assign import LabelUpdateRule, assign_labels, image_rng
from boxsup.assign.assign import BoxedPool
from boxsup.assign.assigner import AssignmentSpec
from boxsup.assign.cache import MB, BoxedPoolCache
from boxsup.assign.packed import PackedPool
from boxsup.config import load_config
from boxsup.data.annotations import Box, ImageAnnotation
from boxsup.data.synth_photo import photo_sample
from boxsup.errors import BoxSupError
from boxsup.platform.search_space import load_search_space
from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.selective_search import selective_search
from boxsup.proposals.store import ProposalStore

# sha256 of the label maps, choices and chosen costs that the code before packing (BoxedPool holding
# the refined CandidatePool: int32 atom map, CSR with float32 ones) gave for these inputs.
SYNTHETIC_DIGEST = "f74948da78449db60a62db46cff4ca6bad3d970027c2222196bb9150d3415856"
SELECTIVE_SEARCH_DIGEST = "c47c47168747878e43376657f94441cd6eb497a95109b58805669faacc8a82bd"


def synthetic_pool(seed: int, h: int = 60, w: int = 80) -> tuple[CandidatePool, np.ndarray, np.ndarray]:
    """Three random merge hierarchies over a blocky atom map plus 15 random atom sets; 1-3 boxes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 60, (h // 5, w // 5))
    fine = np.kron(coarse, np.ones((5, 5), np.int64)) * 4 + rng.integers(0, 2, (h, w)) * (rng.random((h, w)) < 0.05)
    _, atoms = np.unique(fine, return_inverse=True)
    atoms = atoms.reshape(h, w)
    n_atoms = int(atoms.max()) + 1
    sets = []
    for _ in range(3):
        owner = rng.integers(0, max(2, n_atoms // 3), n_atoms)
        regions = [np.flatnonzero(owner == r) for r in np.unique(owner)]
        sets += regions
        while len(regions) > 1:
            i, j = sorted(rng.choice(len(regions), 2, replace=False))
            merged = np.concatenate([regions[i], regions[j]])
            regions = [r for k, r in enumerate(regions) if k not in (i, j)] + [merged]
            sets.append(merged)
    sets += [np.flatnonzero(rng.random(n_atoms) < 0.3) for _ in range(15)]  # nested with nothing
    sets = [s for s in sets if len(s)]
    order = rng.permutation(len(sets))
    rows = np.concatenate([np.full(len(sets[i]), r) for r, i in enumerate(order)])
    cols = np.concatenate([sets[i] for i in order])
    membership = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(sets), n_atoms))
    pool = CandidatePool(atoms, membership).deduplicated()
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        boxes.append([x0, y0, x0 + int(rng.integers(10, w - x0)), y0 + int(rng.integers(10, h - y0))])
    return pool, np.array(boxes), rng.integers(1, 4, len(boxes))


@cache
def photo_pool(index: int) -> tuple[CandidatePool, np.ndarray, np.ndarray]:
    """Selective Search (fast, 2,000 at most) on a 160-px photo-like image, and its boxes."""
    sample = photo_sample(3, index, size=160)
    pool = selective_search(sample.image, mode="fast", max_candidates=2000)
    return (pool, np.array([[b.x0, b.y0, b.x1, b.y1] for b in sample.boxes]),
            np.array([b.label for b in sample.boxes]))


def assert_same_pool(packed: PackedPool, pool: CandidatePool) -> None:
    assert (packed.n_atoms, packed.n_candidates, packed.shape) == (pool.n_atoms, pool.n_candidates, pool.shape)
    np.testing.assert_array_equal(packed.atoms, pool.atoms)
    np.testing.assert_array_equal(packed.atom_areas(), pool.atom_areas())
    rng = np.random.default_rng(0)
    means = rng.random((pool.n_atoms, 3)).astype(np.float16)  # what workers send, times the areas
    values = means.astype(np.float64) * pool.atom_areas()[:, None]
    np.testing.assert_array_equal(packed.sum_over_candidates(values), pool.membership @ values)  # exact
    np.testing.assert_array_equal(packed.sum_over_candidates(pool.atom_areas()), pool.areas())
    other = rng.normal(size=pool.n_atoms)  # arbitrary floats: equal up to rounding
    np.testing.assert_allclose(packed.sum_over_candidates(other), pool.membership @ other, atol=1e-9)
    m = pool.membership
    for c in range(pool.n_candidates):
        np.testing.assert_array_equal(np.sort(packed.candidate_atoms(c)), m.indices[m.indptr[c]:m.indptr[c + 1]])
    labels = np.arange(pool.n_atoms) % 7
    np.testing.assert_array_equal(packed.expand(labels), labels[pool.atoms])


@pytest.mark.parametrize("max_nests", [32, 2, 0])
def test_packed_pool_holds_the_same_candidates(max_nests):
    for seed in range(4):
        pool, _, _ = synthetic_pool(seed)
        assert_same_pool(PackedPool.from_pool(pool, max_nests), pool)


def test_packed_pool_keeps_empty_candidates_and_big_atom_ids():
    atoms = np.arange(300 * 250, dtype=np.int32).reshape(300, 250)  # 75,000 atoms: beyond uint16
    membership = sp.csr_matrix((np.ones(4), ([0, 0, 2, 2], [0, 74_999, 5, 6])), shape=(3, atoms.max() + 1))
    pool = CandidatePool(atoms, membership)
    packed = PackedPool.from_pool(pool)
    assert packed.candidate_atoms(1).size == 0
    assert_same_pool(packed, pool)


def test_selective_search_pools_pack_into_nests_only():
    pool, boxes, _ = photo_pool(0)
    refined, _ = pool.refined_by_boxes(boxes)
    packed = PackedPool.from_pool(refined)
    assert len(packed.rest_rows) == 0 and len(packed.nests) <= 16  # every merge tree is laminar
    assert_same_pool(packed, refined)
    m = refined.membership
    csr_bytes = refined.atoms.nbytes + m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
    assert packed.nbytes * 4 < csr_bytes


def numpy_arrays(obj, seen=None) -> list[np.ndarray]:
    """Every numpy array reachable through dataclass fields, lists and tuples."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if dataclasses.is_dataclass(obj):
        return [a for f in dataclasses.fields(obj) for a in numpy_arrays(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [a for item in obj for a in numpy_arrays(item)]
    return []


def test_boxed_pool_counts_every_array_it_holds():
    pool, boxes, labels = photo_pool(1)
    for boxed in (BoxedPool.build(pool, boxes, labels), BoxedPool.build(pool, boxes, labels, consensus_margin=0.1)):
        assert boxed.nbytes >= sum(a.nbytes for a in numpy_arrays(boxed))
    assert boxed.consensus is not None and boxed.consensus.shape == boxed.overlap.shape
    # the kept E_c is the one a pool without it computes (a pool the cache could not keep gets the same labels)
    np.testing.assert_array_equal(boxed.consensus, BoxedPool.build(pool, boxes, labels).consensus_cost(0.1))


# ---- label maps: the same as before packing --------------------------------------------------
def label_update_rounds(boxed: BoxedPool, image: str, seed: int, settings) -> list:
    """Round 0 on E_o alone, then rounds on random float16 per-atom means (what workers send)."""
    rng = np.random.default_rng(seed)
    results = []
    for round_index, (region, margin, trust) in enumerate(settings):
        sums = None
        if round_index:
            sums = boxed.sums_from_means(rng.random((boxed.pool.n_atoms, len(boxed.loss_labels))).astype(np.float16))
        rule = dataclasses.replace(LabelUpdateRule.paper(lam=3.0, k=3 if len(settings) == 4 else 5),
                                   region_cost=region, sample_margin=margin, trust_margin=trust)
        results.append(assign_labels(boxed, sums, rule, round_index, image_rng(0, round_index, image)))
    return results


def test_label_maps_match_the_code_before_packing():
    settings = [("mean", np.inf, 1.0), ("mean", np.inf, 1.0), ("iou", np.inf, 1.0), ("iou", 0.05, 0.3)]
    digest = hashlib.sha256()
    for i in range(6):
        pool, boxes, labels = synthetic_pool(i)
        for result in label_update_rounds(BoxedPool.build(pool, boxes, labels), f"img{i}", 100 + i, settings):
            digest.update(result.label_map.tobytes())
            digest.update(result.chosen.astype(np.int64).tobytes())
            digest.update(result.chosen_cost.astype(np.float64).tobytes())
    assert digest.hexdigest() == SYNTHETIC_DIGEST


def test_selective_search_label_maps_match_the_csr_form_and_the_code_before_packing():
    settings = [("mean", np.inf, 1.0), ("mean", np.inf, 1.0), ("iou", np.inf, 1.0)]
    digest = hashlib.sha256()
    for i in range(3):
        pool, boxes, labels = photo_pool(i)
        boxed = BoxedPool.build(pool, boxes, labels)
        reference = dataclasses.replace(boxed, pool=pool.refined_by_boxes(boxes)[0])  # the CSR form
        for result, expected in zip(label_update_rounds(boxed, f"p{i}", i, settings),
                                    label_update_rounds(reference, f"p{i}", i, settings)):
            np.testing.assert_array_equal(result.label_map, expected.label_map)
            np.testing.assert_array_equal(result.chosen_cost, expected.chosen_cost)
            digest.update(result.label_map.tobytes())
            digest.update(result.chosen.astype(np.int64).tobytes())
    assert digest.hexdigest() == SELECTIVE_SEARCH_DIGEST


# ---- the cache ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Sized:
    nbytes: int


def test_cache_never_exceeds_its_byte_budget_and_keeps_what_it_holds_once_full():
    rng = np.random.default_rng(0)
    for trial in range(20):
        budget = int(rng.integers(0, 5000))
        cache_ = BoxedPoolCache(store=None, max_bytes=budget)  # type: ignore[arg-type]
        model: dict[str, int] = {}  # what the cache should hold: pools admitted while they fitted
        for _ in range(400):
            image = f"i{rng.integers(0, 30)}"
            size = int(rng.choice([rng.integers(0, 400), rng.integers(400, 6000)]))
            cache_.put(image, Sized(size))  # type: ignore[arg-type]
            model.pop(image, None)
            if sum(model.values()) + size <= budget:
                model[image] = size
            assert cache_.nbytes <= budget
            assert cache_.nbytes == sum(p.nbytes for p in cache_._pools.values())
            assert cache_._pools.keys() == model.keys()


def test_rounds_over_a_shard_larger_than_the_cache_hit_on_the_share_that_fits():
    """Every round visits the images in the same order: the cached share hits every round (an LRU cache
    would drop exactly the pool asked for next and miss on every image)."""
    cache_ = BoxedPoolCache(store=None, max_bytes=10 * 100)  # type: ignore[arg-type]
    hits = 0
    for round_index in range(3):
        for i in range(40):  # 40 pools of 100 bytes, room for 10
            if f"i{i}" in cache_:
                hits += round_index > 0
            else:
                cache_.put(f"i{i}", Sized(100))  # type: ignore[arg-type]
    assert hits == 2 * 10


def annotation(image_id: str, shape: tuple[int, int]) -> ImageAnnotation:
    return ImageAnnotation(image_id, shape[1], shape[0], [Box(4, 4, 40, 30, 1), Box(20, 10, 70, 50, 2)])


def test_cache_through_the_store_keeps_the_first_pools_that_fit(tmp_path):
    store = ProposalStore(tmp_path / "store")
    for i in range(5):
        store.save(f"s{i}", synthetic_pool(i)[0])
    anns = [annotation(f"s{i}", (60, 80)) for i in range(5)]
    sizes = [BoxedPoolCache(store).get(a).nbytes for a in anns]
    cache_ = BoxedPoolCache(store, max_bytes=sizes[0] + sizes[1] + sizes[2])
    first = cache_.get(anns[0])
    assert cache_.get(anns[0]) is first  # built once
    cache_.get(anns[1]), cache_.get(anns[2])
    fourth = cache_.get(anns[3])  # no room left: used, not kept, nothing dropped for it
    assert fourth.pool.n_candidates > 0
    assert [f"s{i}" in cache_ for i in range(5)] == [True, True, True, False, False]
    assert cache_.get(anns[0]) is first and cache_.nbytes <= cache_.max_bytes


def test_a_pool_larger_than_the_budget_is_used_but_not_kept(tmp_path):
    store = ProposalStore(tmp_path / "store")
    store.save("small", synthetic_pool(0, 30, 40)[0])
    store.save("big", synthetic_pool(1, 120, 160)[0])
    small, big = annotation("small", (30, 40)), annotation("big", (120, 160))
    budget = BoxedPoolCache(store).get(small).nbytes + 1
    cache_ = BoxedPoolCache(store, max_bytes=budget)
    kept = cache_.get(small)
    assert cache_.get(big).nbytes > budget
    assert "big" not in cache_ and cache_.get(small) is kept  # nothing was dropped for it
    nothing = BoxedPoolCache(store, max_bytes=0)
    assert nothing.get(small).pool.n_candidates > 0 and len(nothing) == 0 and nothing.nbytes == 0


# ---- config ----------------------------------------------------------------------------------
def test_cache_mb_is_validated_and_reaches_the_actors():
    cfg = load_config(None, ["data.root=/data", "assign.cache_mb=512"])
    assert cfg["assign"]["cache_mb"] == 512.0
    assert load_config(None, ["data.root=/data"])["assign"]["cache_mb"] == 2048.0
    with pytest.raises(BoxSupError, match=r"assign.cache_mb: must be >= 0"):
        load_config(None, ["data.root=/data", "assign.cache_mb=-1"])
    with pytest.raises(BoxSupError, match=r"assign.cache_mb: expected a finite float"):
        load_config(None, ["data.root=/data", "assign.cache_mb=lots"])
    default_spec = AssignmentSpec({}, (), "p", "l", LabelUpdateRule(), 0)
    assert default_spec.cache_mb * MB == BoxedPoolCache(None).max_bytes  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AssignmentSpec.rule"):  # the old (lam, k, seed) arguments: not shifted silently
        AssignmentSpec({}, (), "p", "l", 3.0, 5, 0)  # type: ignore[arg-type]


def test_the_retired_cache_images_key_is_refused_in_one_line(tmp_path):
    for call in (lambda: load_config(None, ["data.root=/data", "assign.cache_images=4096"]),
                 lambda: load_config(write(tmp_path / "c.yaml", "data: {root: /d}\nassign: {cache_images: 10}\n")),
                 lambda: load_search_space(write(tmp_path / "s.yaml",
                                                 "params: {assign.cache_images: {grid: [1, 2]}}\n"))):
        with pytest.raises(BoxSupError, match=r"assign.cache_images was removed: replaced by assign.cache_mb") as err:
            call()
        assert "\n" not in str(err.value)


def write(path, text: str):
    path.write_text(text)
    return path
