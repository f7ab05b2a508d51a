"""How good is a trained network as the label update's judge? Its own masks inside the GT boxes, against the GT.

    python benchmarks/network_box_masks.py --run runs/<run> --data demo_data [--crf]

For every GT box of the train and val splits: the IoU inside the box between the network's mask of
the box's class (P(l_B | p) > 0.5) and the GT pixels of that class (void left out); on train also
against the run's last label round, and that round's own IoU with the GT. A network whose masks
are far worse than its labels can only nudge the choice; one that matches its labels much more
closely than the GT has learnt to confirm them. ``--crf`` refines the network's output with the dense
CRF (DeepLab's parameters) first, and also reports the soft IoU (probabilities, as E_r reads them).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from boxsup.data.annotations import IGNORE  # noqa: E402
from boxsup.data.label_store import LabelStore  # noqa: E402
from boxsup.data.voc import VOCDataset  # noqa: E402
from boxsup.evaluation.crf import dense_crf  # noqa: E402
from boxsup.evaluation.inference import predict_probs  # noqa: E402
from boxsup.models.checkpoint import load_checkpoint, network_from_checkpoint  # noqa: E402


def box_iou_inside(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """IoU of two boolean masks over the valid pixels (NaN when both are empty)."""
    a, b = a & valid, b & valid
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else float("nan")


def soft_iou_inside(p: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """Soft IoU of probabilities with a boolean mask over the valid pixels, as E_r's soft IoU reads them."""
    p, truth = p[valid], truth[valid]
    inter = float(p[truth].sum())
    union = np.count_nonzero(truth) + float(p.sum()) - inter
    return inter / union if union > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory (checkpoint.pt and labels/)")
    parser.add_argument("--data", required=True, help="its dataset root in the VOC layout")
    parser.add_argument("--crf", action="store_true", help="refine the network's output with the dense CRF first")
    args = parser.parse_args()
    state = load_checkpoint(Path(args.run) / "checkpoint.pt")
    network = network_from_checkpoint(state, args.run)
    labels = LabelStore(Path(args.run) / "labels")
    last = max(labels.rounds(up_to=10**9), default=None)
    print(f"{args.run}: last label round {last}\n")
    print("| split | boxes | network vs GT | network vs last labels | last labels vs GT | soft network vs GT |")
    print("|---|---|---|---|---|---|")
    for split in ("train", "val"):
        dataset = VOCDataset(args.data, split, tuple(state["classes"]))
        rows: dict[str, list[float]] = {"net_gt": [], "net_labels": [], "labels_gt": [], "soft_gt": []}
        for image_id in tqdm(dataset.ids, desc=split, unit="img", leave=False):
            ann, gt = dataset.annotation(image_id), dataset.mask(image_id)
            image = dataset.image(image_id)
            probs = predict_probs(network, image)
            if args.crf:
                probs = dense_crf(image, probs)
            painted = None
            if split == "train" and last is not None and labels.has(last, image_id):
                painted = labels.read(last, image_id)
            for box in ann.boxes:
                inside = (slice(box.y0, box.y1), slice(box.x0, box.x1))
                valid, truth, net = gt[inside] != IGNORE, gt[inside] == box.label, probs[box.label][inside] > 0.5
                rows["net_gt"].append(box_iou_inside(net, truth, valid))
                rows["soft_gt"].append(soft_iou_inside(probs[box.label][inside], truth, valid))
                if painted is not None:
                    label = painted[inside] == box.label
                    rows["net_labels"].append(box_iou_inside(net, label, valid))
                    rows["labels_gt"].append(box_iou_inside(label, truth, valid))
        cells = [f"{np.nanmean(v):.3f}" if v else "-" for v in rows.values()]
        print(f"| {split} | {len(rows['net_gt'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
