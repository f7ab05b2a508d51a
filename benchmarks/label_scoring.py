"""Which way of asking a trained network picks the best candidates? Scored against the hidden masks.

    python benchmarks/label_scoring.py --run runs/<run> --data DATA --store STORE [--lams 0 1 3 10]

For every box of the training split, with the run's final network: the candidate the label update
would take by E_o + mu E_c + lambda E_r (soft IoU form, the defaults' mu 1 and margin 0.1), for each
lambda, with the network's P from the image alone and averaged with its mirror image
(``assign.score_flip``). Each cell is the mean per-box GT IoU of the choice inside its box: "lowest"
takes the lowest cost (k 1), "draw" is the expectation of the default draw (uniform among the 5
lowest within 0.1 of the lowest). lambda 0 is the network-free update; the "oracle" line is the best
candidate the pool holds. No training: minutes on a CPU for the demo's sets.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from boxsup.assign.assign import BoxedPool, assignment_costs, reduce_losses  # noqa: E402
from boxsup.assign.diagnostics import candidate_gt_iou, gt_atom_histogram  # noqa: E402
from boxsup.assign.rule import LabelUpdateRule  # noqa: E402
from boxsup.data.voc import VOCDataset  # noqa: E402
from boxsup.models import normalize_image  # noqa: E402
from boxsup.models.checkpoint import load_checkpoint, network_from_checkpoint  # noqa: E402
from boxsup.proposals.store import ProposalStore  # noqa: E402
from boxsup.trainers.epoch import batch_log_probs, costs_from_log_probs  # noqa: E402

K, SAMPLE_MARGIN, CONSENSUS_MARGIN = 5, 0.1, 0.1


def lowest_and_drawn(cost: np.ndarray, iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per box: GT IoU of the lowest-cost candidate, and the mean over the default draw's candidates."""
    columns = np.arange(cost.shape[1])
    order = np.argsort(cost, axis=0, kind="stable")[:K]
    eligible = cost[order, columns] <= cost[order[0], columns] + SAMPLE_MARGIN
    drawn = (iou[order, columns] * eligible).sum(axis=0) / eligible.sum(axis=0)
    return iou[order[0], columns], drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory (its checkpoint.pt)")
    parser.add_argument("--data", required=True, help="its dataset root in the VOC layout (train masks are read)")
    parser.add_argument("--store", required=True, help="the run's proposal store")
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    args = parser.parse_args()
    state = load_checkpoint(Path(args.run) / "checkpoint.pt")
    network = network_from_checkpoint(state, args.run)
    dataset = VOCDataset(args.data, "train", tuple(state["classes"]))
    store = ProposalStore(args.store)
    cells: dict[tuple[float, bool, str], list[np.ndarray]] = {}
    oracle = []
    for image_id in tqdm(dataset.ids, desc="boxes", unit="img"):
        ann = dataset.annotation(image_id)
        if not ann.boxes:
            continue
        candidates = store.load(image_id, expected_shape=(ann.height, ann.width))
        boxed = BoxedPool.build(candidates, ann.boxes_array(), ann.labels_array(), CONSENSUS_MARGIN)
        iou = candidate_gt_iou(boxed, gt_atom_histogram(dataset.mask(image_id), boxed.pool.atoms, dataset.num_classes))
        oracle.append(iou.max(axis=0))
        for flip in (False, True):
            log_probs = batch_log_probs(network, normalize_image(dataset.image(image_id))[None], torch.device("cpu"), flip)
            sums = reduce_losses(costs_from_log_probs(log_probs[0]).numpy(), boxed.pool.atoms, ann.labels_array())
            for lam in args.lams:
                rule = replace(LabelUpdateRule.paper(lam=lam), region_cost="iou", consensus=1.0,
                               consensus_margin=CONSENSUS_MARGIN)
                cost = assignment_costs(boxed, sums, rule, 1)
                lowest, drawn = lowest_and_drawn(cost, iou)
                cells.setdefault((lam, flip, "lowest"), []).append(lowest)
                cells.setdefault((lam, flip, "draw"), []).append(drawn)
    mean = {key: float(np.concatenate(values).mean()) for key, values in cells.items()}
    print(f"{args.run}: {sum(len(o) for o in oracle)} boxes, oracle {np.concatenate(oracle).mean():.4f}\n")
    print("| lambda | lowest | draw | lowest, flip | draw, flip |")
    print("|---|---|---|---|---|")
    for lam in args.lams:
        row = [mean[lam, flip, how] for flip in (False, True) for how in ("lowest", "draw")]
        print(f"| {lam:g} | " + " | ".join(f"{v:.4f}" for v in row) + " |")


if __name__ == "__main__":
    main()
