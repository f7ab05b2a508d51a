"""Label quality of the label update without a network: E_o alone against E_o + mu E_c, for a grid of mu and margin.

    python benchmarks/consensus_labels.py --data demo_data --store runs/proposals/<store> \
        [--mus 0.5 1 3] [--margins 0.05 0.1 0.2]

Round 0 of the label update (greedy, k 1) over a VOC-layout training split, scored against the
masks that box supervision hides: pseudo-label mIoU and the mean GT IoU of the chosen candidate
per box. No training: it reads the split's proposal store (``boxsup proposals`` or any run's).
"""

from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from boxsup.assign import LabelUpdateRule, assign_labels, image_rng  # noqa: E402
from boxsup.assign.cache import BoxedPoolCache  # noqa: E402
from boxsup.assign.diagnostics import chosen_gt_iou, gt_atom_histogram  # noqa: E402
from boxsup.data.classes import read_class_file  # noqa: E402
from boxsup.data.voc import VOCDataset  # noqa: E402
from boxsup.evaluation.metrics import ConfusionMatrix  # noqa: E402
from boxsup.proposals.store import ProposalStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset root in the VOC layout with classes.txt")
    parser.add_argument("--split", default="train")
    parser.add_argument("--store", required=True, help="the split's Selective Search proposal store")
    parser.add_argument("--mus", type=float, nargs="+", default=[0.5, 1.0, 3.0])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    args = parser.parse_args()
    dataset = VOCDataset(args.data, args.split, read_class_file(Path(args.data) / "classes.txt"))
    pools = BoxedPoolCache(ProposalStore(args.store))
    settings = [(0.0, 0.0), *itertools.product(args.mus, args.margins)]
    confusions = {s: ConfusionMatrix(dataset.num_classes) for s in settings}
    ious: dict[tuple[float, float], list[float]] = {s: [] for s in settings}
    for image_id in tqdm(dataset.ids, desc="images", unit="img"):
        ann = dataset.annotation(image_id)
        if not ann.boxes:
            continue
        boxed, mask = pools.get(ann), dataset.mask(image_id)
        hist = gt_atom_histogram(mask, boxed.pool.atoms, dataset.num_classes)
        for mu, margin in settings:  # round 0 of the paper's rule, taking the lowest cost (k 1), with E_c
            rule = replace(LabelUpdateRule.paper(lam=0.0, k=1), consensus=mu, consensus_margin=margin)
            result = assign_labels(boxed, None, rule, 0, image_rng(0, 0, image_id))
            confusions[mu, margin].update(result.label_map, mask)
            ious[mu, margin].extend(chosen_gt_iou(boxed, result.chosen, hist))
    print(f"{len(dataset.ids)} {args.split} images of {args.data}\n")
    print("| mu | margin | pseudo-label mIoU | mean GT IoU of the chosen candidate |\n|---|---|---|---|")
    for mu, margin in settings:
        shown = "-" if mu == 0 else f"{margin:g}"
        print(f"| {mu:g} | {shown} | {confusions[mu, margin].compute().miou:.3f} | {np.mean(ious[mu, margin]):.3f} |")


if __name__ == "__main__":
    main()
