"""Quality of one label update from a trained network: pseudo-label mIoU for lambda, k and e(p, l).

    python benchmarks/label_quality.py --config configs/demo.yaml --checkpoint runs/<run>/checkpoint.pt

Runs round 1 of the label update over the training split with the checkpoint's network for each
combination and scores the label maps against the masks that box supervision hides.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from boxsup.assign import LabelUpdateRule, assign_labels, image_rng
from boxsup.assign.cache import BoxedPoolCache
from boxsup.config import load_config
from boxsup.data.sources import build_training_set, training_annotations
from boxsup.evaluation.metrics import ConfusionMatrix
from boxsup.models import model_from_config
from boxsup.models.checkpoint import load_checkpoint
from boxsup.platform.launch import ensure_proposals
from boxsup.trainers.epoch import pixel_costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 1.0, 3.0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--pixel-costs", nargs="+", default=["error", "xent"])
    args = parser.parse_args()
    cfg = load_config(args.config)
    dataset = build_training_set(cfg)
    annotations = [a for a in training_annotations(cfg, dataset) if a.has_mask and a.boxes]
    pools = BoxedPoolCache(ensure_proposals(cfg, dataset, progress=False))
    state = load_checkpoint(args.checkpoint)
    model = model_from_config(state["config"]["model"], dataset.num_classes, "none")
    model.load_state_dict(state["model"])
    device = torch.device("cpu")
    costs = {kind: {a.image_id: pixel_costs(model, dataset.image(a.image_id), device, kind) for a in annotations}
             for kind in args.pixel_costs}
    print(f"{len(annotations)} training images, checkpoint {args.checkpoint} (epoch {state['epoch']})\n")
    print("| e(p, l) | lambda | k | pseudo-label mIoU |\n|---|---|---|---|")
    for kind, lam, k in itertools.product(args.pixel_costs, args.lams, args.ks):
        if lam == 0 and kind != args.pixel_costs[0]:
            continue  # E_o alone does not depend on e(p, l)
        confusion = ConfusionMatrix(dataset.num_classes)
        for ann in annotations:
            boxed = pools.get(ann)
            sums = boxed.loss_sums(costs[kind][ann.image_id]) if lam else None
            result = assign_labels(boxed, sums, LabelUpdateRule.paper(lam=lam, k=k), 1,
                                   image_rng(cfg["seed"], 1, ann.image_id))
            confusion.update(result.label_map, dataset.mask(ann.image_id))
        print(f"| {kind if lam else '-'} | {lam:g} | {k} | {confusion.compute().miou:.3f} |")


if __name__ == "__main__":
    main()
