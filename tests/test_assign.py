"""The label update against hand-computed costs and choices (Eq. 2-4, Sec. 4.3)."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from boxsup.assign import BoxedPool, LabelUpdateRule, assign_labels, assignment_costs, image_rng, sample_lowest_k
from boxsup.assign.costs import box_iou
from boxsup.proposals.pool import CandidatePool

# 4x4 image, four 2x2 superpixels:   0 0 1 1 / 0 0 1 1 / 2 2 3 3 / 2 2 3 3
ATOMS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
# candidates: C0={0}, C1={0,1}, C2={0,1,2,3}, C3={3}, C4={1}
MEMBERS = [[0], [0, 1], [0, 1, 2, 3], [3], [1]]
ROUND = 1  # the rules below do not change with the round (no ramp, no greedy rounds)


def rule(lam: float, k: int = 5, **knobs) -> LabelUpdateRule:
    """The paper's rule with this lambda and k, and any other knob as given."""
    return replace(LabelUpdateRule.paper(lam=lam, k=k), **knobs)


def make_pool() -> CandidatePool:
    m = np.zeros((len(MEMBERS), 4), np.float32)
    for i, atoms in enumerate(MEMBERS):
        m[i, atoms] = 1
    return CandidatePool(ATOMS, sp.csr_matrix(m))


def pixel_losses() -> np.ndarray:
    """e(p, l) for labels (bg, 1): the network believes atom 0 is background and atom 1 object."""
    losses = np.full((2, 4, 4), 1.0)
    losses[0][ATOMS == 0], losses[1][ATOMS == 0] = 0.2, 3.0
    losses[0][ATOMS == 1], losses[1][ATOMS == 1] = 3.0, 0.2
    return losses


def test_box_iou_hand_values():
    iou = box_iou(np.array([[0, 0, 2, 2]]), np.array([[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]]))
    np.testing.assert_allclose(iou, [[1.0, 1 / 7, 0.0]])


def test_costs_match_hand_computation():
    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    losses = boxed.loss_sums(pixel_losses())
    # E_o = 1 - IoU(box, tight box of S): C0 .5, C1 0, C2 .5, C3 1, C4 .5
    np.testing.assert_allclose(assignment_costs(boxed, None, rule(3.0), ROUND)[:, 0], [0.5, 0.0, 0.5, 1.0, 0.5])
    # E_r = 1/2 [mean of e(p, 1) over S in B + mean of e(p, bg) over the rest of B]:
    # C0: (3.0 + 3.0) / 2 = 3.0; C1, C2: S covers B: (4*3.0 + 4*0.2) / 8 / 2 = 0.8;
    # C3 misses the box: inf; C4: (0.2 + 0.2) / 2 = 0.2
    expected = np.array([0.5, 0.0, 0.5, 1.0, 0.5]) + 3.0 * np.array([3.0, 0.8, 0.8, np.inf, 0.2])
    np.testing.assert_allclose(assignment_costs(boxed, losses, rule(3.0), ROUND)[:, 0], expected)


def test_region_term_has_no_size_bias():
    """A network that calls everything background must not make the smallest segment cheapest."""
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 0:8, 0:8] = True  # the whole box
    masks[1, 2:6, 2:6] = True  # the object
    masks[2, 3:4, 3:4] = True  # a speck
    boxed = BoxedPool.build(CandidatePool.from_masks(masks), np.array([[0, 0, 8, 8]]), np.array([1]))
    losses = np.stack([np.full((8, 8), 0.05), np.full((8, 8), 3.0)])  # background everywhere
    region = (assignment_costs(boxed, boxed.loss_sums(losses), rule(1.0), ROUND)
              - assignment_costs(boxed, None, rule(1.0), ROUND))[:, 0]
    np.testing.assert_allclose(region[1], region[2])  # object and speck cost the same E_r
    assert region[0] < region[1]  # covering the box leaves no background term


def test_region_term_changes_the_choice():
    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    losses = boxed.loss_sums(pixel_losses())
    rng = np.random.default_rng(0)
    overlap_only = assign_labels(boxed, None, rule(3.0, 1), ROUND, rng)
    with_network = assign_labels(boxed, losses, rule(3.0, 1), ROUND, rng)
    assert overlap_only.chosen.tolist() == [1]  # best box fit
    assert with_network.chosen.tolist() == [4]  # what the network calls object
    expected = np.zeros((4, 4), np.uint8)
    expected[0:2, 2:4] = 1
    np.testing.assert_array_equal(with_network.label_map, expected)
    np.testing.assert_allclose(with_network.chosen_cost, [0.5 + 3.0 * 0.2])


def test_candidates_missing_the_box_are_drawn_last():
    costs = np.array([[np.inf], [1.0], [np.inf], [2.0]])
    picks = {int(sample_lowest_k(costs, 5, np.random.default_rng(s))[0]) for s in range(100)}
    assert picks == {1, 3}
    assert sample_lowest_k(np.full((3, 1), np.inf), 2, np.random.default_rng(0))[0] == 0


def test_lambda_zero_ignores_the_network():
    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    result = assign_labels(boxed, boxed.loss_sums(pixel_losses()), rule(0.0, 1), ROUND, np.random.default_rng(0))
    assert result.chosen.tolist() == [1]


def test_painting_clips_to_the_box():
    # C2 covers the whole image, but only the pixels of its box may take the box's label.
    boxed = BoxedPool.build(make_pool(), np.array([[1, 1, 3, 3]]), np.array([2]))
    result = assign_labels(boxed, None, rule(0.0, 1), ROUND, np.random.default_rng(0))
    assert result.chosen.tolist() == [2]
    expected = np.zeros((4, 4), np.uint8)
    expected[1:3, 1:3] = 2
    np.testing.assert_array_equal(result.label_map, expected)


def test_smaller_segment_stays_on_top():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 0:6, 0:6] = True  # big object, box (0,0,6,6)
    masks[1, 2:4, 2:4] = True  # small object in front, box (2,2,4,4)
    pool = CandidatePool.from_masks(masks)
    boxes, labels = np.array([[2, 2, 4, 4], [0, 0, 6, 6]]), np.array([3, 1])
    result = assign_labels(BoxedPool.build(pool, boxes, labels), None, rule(0.0, 1), ROUND, np.random.default_rng(0))
    expected = np.ones((6, 6), np.uint8)
    expected[2:4, 2:4] = 3
    np.testing.assert_array_equal(result.label_map, expected)


def test_sampling_obeys_k():
    costs = np.array([[5.0], [1.0], [3.0], [2.0], [4.0], [0.5]])
    lowest3 = {5, 1, 3}
    picks = {int(sample_lowest_k(costs, 3, np.random.default_rng(s))[0]) for s in range(200)}
    assert picks == lowest3
    assert {int(sample_lowest_k(costs, 1, np.random.default_rng(s))[0]) for s in range(20)} == {5}
    # k larger than the pool: any candidate can be drawn
    assert {int(sample_lowest_k(costs, 50, np.random.default_rng(s))[0]) for s in range(300)} == set(range(6))


def test_sampling_is_fixed_by_seed_round_and_image():
    costs = np.random.default_rng(1).random((50, 8))
    draw = lambda seed, r, image: sample_lowest_k(costs, 5, image_rng(seed, r, image)).tolist()  # noqa: E731
    assert draw(0, 3, "a") == draw(0, 3, "a")
    variants = {tuple(draw(0, 3, "a")), tuple(draw(1, 3, "a")), tuple(draw(0, 4, "a")), tuple(draw(0, 3, "b"))}
    assert len(variants) == 4


def test_sampling_rejects_bad_k_and_empty_pools():
    with pytest.raises(ValueError):
        sample_lowest_k(np.zeros((3, 1)), 0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        sample_lowest_k(np.zeros((0, 1)), 1, np.random.default_rng(0))


def test_trust_margin_keeps_only_candidates_that_fit_the_box_almost_as_well_as_the_best():
    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    losses = boxed.loss_sums(pixel_losses())
    # E_o: C0 .5, C1 0, C2 .5, C3 1, C4 .5; with the network C4 would win (0.5 + 3 * 0.2 < 0 + 3 * 0.8)
    assert np.argmin(assignment_costs(boxed, losses, rule(3.0), ROUND)[:, 0]) == 4
    trusted = assignment_costs(boxed, losses, rule(3.0, trust_margin=0.25), ROUND)[:, 0]
    assert np.isfinite(trusted).tolist() == [False, True, False, False, False]  # only C1 is within 0.25 of E_o's best
    wide = assignment_costs(boxed, losses, rule(3.0, trust_margin=0.5), ROUND)[:, 0]
    assert np.isfinite(wide).tolist() == [True, True, True, False, True] and np.argmin(wide) == 4


def test_lambda_ramps_linearly_from_the_first_network_round():
    from boxsup.assign.rule import ramped_lambda

    assert [ramped_lambda(3.0, r, 1, 4) for r in range(1, 7)] == [0.75, 1.5, 2.25, 3.0, 3.0, 3.0]
    assert ramped_lambda(3.0, 1, 1, 0) == 3.0  # no ramp
    assert [LabelUpdateRule(lam=3.0, lam_ramp=4, first_network_round=2).lam_at(r) for r in (1, 2, 5)] == [0.0, 0.75, 3.0]


def test_soft_iou_region_cost_matches_hand_computation():
    """E_r = 1 - sum P / (|S & B| + sum_B P - sum P), with P = 1 - e: P(l) is 0.2 on atom 0, 0.9 on atom 1."""
    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    e = np.ones((2, 4, 4))
    e[1][ATOMS == 0], e[1][ATOMS == 1] = 0.8, 0.1  # e(p, 1) = 1 - P(1 | p)
    e[0] = 1 - e[1]
    region = (assignment_costs(boxed, boxed.loss_sums(e), rule(1.0, region_cost="iou"), ROUND)
              - assignment_costs(boxed, None, rule(1.0), ROUND))[:, 0]
    # sum of P over B = 4 * 0.2 + 4 * 0.9 = 4.4
    expected = 1 - np.array([0.8 / (4 + 4.4 - 0.8), 4.4 / 8, 4.4 / 8, np.nan, 3.6 / (4 + 4.4 - 3.6)])
    np.testing.assert_allclose(region[[0, 1, 2, 4]], expected[[0, 1, 2, 4]])
    assert region[3] == np.inf  # C3 misses the box


def test_sample_margin_draws_only_near_equivalent_candidates():
    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    # E_o alone: C1 0, C0/C2/C4 0.5, C3 1: with k = 5 any of them can be drawn ...
    drawn = {int(assign_labels(boxed, None, rule(0.0, 5), ROUND, np.random.default_rng(s)).chosen[0]) for s in range(60)}
    assert drawn == {0, 1, 2, 3, 4}
    # ... within 0.25 of the lowest cost only C1 is left
    near = rule(0.0, 5, sample_margin=0.25)
    drawn = {int(assign_labels(boxed, None, near, ROUND, np.random.default_rng(s)).chosen[0]) for s in range(40)}
    assert drawn == {1}


def test_void_paints_the_pixels_on_which_the_near_best_candidates_disagree():
    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    # E_o alone, k 1: C1 = {0, 1} is chosen; its 3 nearest are C1 (0), C0 = {0} (.5), C2 = all (.5, clipped to the box)
    out = assign_labels(boxed, None, rule(0.0, 1, void_k=3), ROUND, rng())
    expected = np.zeros((4, 4), np.uint8)
    expected[0:2, 0:2] = 1  # atom 0: in all three
    expected[0:2, 2:4] = 255  # atom 1: in C1 and C2, not in C0
    np.testing.assert_array_equal(out.label_map, expected)
    assert (out.atom_labels[boxed.pool.atoms][0:2] == 1).all()  # the painted labels keep the choice
    # no void: void_k 0 or 1, or a margin that leaves C1 alone in the near set
    for kwargs in ({"void_k": 0}, {"void_k": 1}, {"void_k": 3, "sample_margin": 0.25}):
        out = assign_labels(boxed, None, rule(0.0, 1, **kwargs), ROUND, rng())
        assert out.void is None or not out.void.any()
        assert (out.label_map != 255).all()


def test_consensus_cost_matches_hand_computation():
    """E_c = 1 - soft IoU of S with the share of the near-best candidates (by E_o) covering each atom."""
    from boxsup.assign.costs import consensus_cost

    boxed = BoxedPool.build(make_pool(), np.array([[0, 0, 4, 2]]), np.array([1]))
    # margin 0.5: near = C0, C1, C2, C4 (E_o .5, 0, .5, .5); atoms 0 and 1 are each covered by 3 of 4
    cost = consensus_cost(boxed.pool, boxed.inside, boxed.overlap, 0.5)[:, 0]
    # agreed mass 3 per atom, T = 6: C0 and C4 (one atom): 1 - 3 / (4 + 6 - 3); C1, C2 (both): 1 - 6 / 8
    np.testing.assert_allclose(cost, [4 / 7, 0.25, 0.25, 1.0, 4 / 7])
    # margin 0: only C1 is near-best, so it agrees with itself fully
    np.testing.assert_allclose(consensus_cost(boxed.pool, boxed.inside, boxed.overlap, 0.0)[:, 0],
                               [0.5, 0.0, 0.0, 1.0, 0.5])
    np.testing.assert_allclose(assignment_costs(boxed, None, rule(3.0, consensus=2.0, consensus_margin=0.5), ROUND)[:, 0],
                               boxed.overlap[:, 0] + 2.0 * cost)


def test_consensus_picks_what_the_equally_fitting_candidates_agree_on():
    """Three candidates fit the box exactly (E_o 0): the whole box, the box with a hole, a thin frame.
    E_o alone keeps the first; with the consensus term the one the others agree with most wins."""
    masks = np.zeros((3, 8, 8), bool)
    masks[0] = True
    masks[1] = True
    masks[1, 3:6, 3:6] = False  # a 3 x 3 hole
    masks[2, [0, -1], :] = masks[2, :, [0, -1]] = True  # the frame
    boxed = BoxedPool.build(CandidatePool.from_masks(masks), np.array([[0, 0, 8, 8]]), np.array([1]))
    # coverage: frame 3/3, the rest 2/3 except the hole 1/3: T = 28 + 27 x 2/3 + 9 / 3 = 49
    # soft IoU: box 49 / 64, holed 46 / 58, frame 28 / 49
    assert assign_labels(boxed, None, rule(0.0, 1), ROUND, np.random.default_rng(0)).chosen.tolist() == [0]
    consensus = rule(0.0, 1, consensus=1.0, consensus_margin=0.1)
    chosen = assign_labels(boxed, None, consensus, ROUND, np.random.default_rng(0)).chosen
    assert chosen.tolist() == [1]
