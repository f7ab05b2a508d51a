"""Recall of ground-truth objects by each proposal method: best-candidate mask IoU >= 0.5 and >= 0.7.

    python benchmarks/proposal_recall.py --data demo_data --split train

Builds (or reuses) a proposal store per method under --stores and prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from boxsup.data.sources import resolve_classes
from boxsup.data.voc import VOCDataset
from boxsup.proposals.generate import METHODS, build_store
from boxsup.proposals.quality import best_ious, object_masks
from boxsup.proposals.store import ProposalStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--classes", default="auto")
    parser.add_argument("--split", default="train")
    parser.add_argument("--stores", default="runs/bench_stores")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--max-candidates", type=int, default=1000)
    args = parser.parse_args()
    classes = resolve_classes({"data": {"classes": args.classes, "root": args.data}})
    dataset = VOCDataset(args.data, args.split, classes)
    print(f"{len(dataset)} images of {args.data} ({args.split})\n")
    print("| method | candidates / image | objects | recall@0.5 | recall@0.7 | mean best IoU | build s / image |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods:
        store = ProposalStore(f"{args.stores}/{method}-{args.max_candidates}")
        started = time.perf_counter()
        report = build_store(dataset, store, method, args.max_candidates, progress=False)
        per_image = (time.perf_counter() - started) / max(report.made, 1)
        ious, counts = [], []
        for image_id in dataset.ids:
            pool = store.load(image_id)
            counts.append(pool.n_candidates)
            ious.extend(best_ious(pool, object_masks(dataset.annotation(image_id), dataset.mask(image_id))))
        ious = np.array(ious)
        built = f"{per_image:.3f}" if report.made else "(reused)"
        print(f"| {method} | {np.mean(counts):.0f} | {len(ious)} | {np.mean(ious >= 0.5):.3f} | "
              f"{np.mean(ious >= 0.7):.3f} | {ious.mean():.3f} | {built} |")


if __name__ == "__main__":
    main()
