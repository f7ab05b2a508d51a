"""How much val mIoU could a perfect choice among the candidates buy? A store of each box's best candidate.

    python benchmarks/oracle_candidates.py --data DATA --store STORE --out ORACLE_STORE
    boxsup train --config configs/demo.yaml --set data.root=DATA proposals.store=ORACLE_STORE \
        assign.lam=0 assign.k=1 assign.update=false assign.consensus=0

For every box of the training split, the candidate of STORE with the highest GT IoU inside the box
(the hidden masks decide, as `pseudo_miou_oracle` does), clipped to its box, is the only candidate
ORACLE_STORE holds for it. Trained with fixed labels, E_o then takes each box's own oracle candidate
(the clipped candidates of the other boxes fit it worse), so the run's val mIoU is what the label
update would reach if it always chose the pool's best, against the network-free row's E_o + E_c choice.
The store keeps STORE's meta.json (so a run accepts it) with ``oracle_of`` added.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from boxsup.assign.assign import BoxedPool  # noqa: E402
from boxsup.assign.diagnostics import candidate_gt_iou, gt_atom_histogram  # noqa: E402
from boxsup.config import load_config  # noqa: E402
from boxsup.data.sources import resolve_classes  # noqa: E402
from boxsup.data.voc import VOCDataset  # noqa: E402
from boxsup.proposals.pool import CandidatePool  # noqa: E402
from boxsup.proposals.store import ProposalStore  # noqa: E402


def oracle_pool(boxed: BoxedPool, gt_iou: np.ndarray) -> CandidatePool:
    """One candidate per box: its highest-GT-IoU candidate, the atoms of it inside the box."""
    masks = []
    for box, candidate in enumerate(gt_iou.argmax(axis=0)):
        member = np.zeros(boxed.pool.n_atoms, dtype=bool)
        member[boxed.pool.candidate_atoms(int(candidate))] = True
        masks.append((member & boxed.inside[:, box])[boxed.pool.atoms])
    return CandidatePool.from_masks(np.stack(masks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset root in the VOC layout (train masks are read)")
    parser.add_argument("--store", required=True, help="the proposal store of its train split")
    parser.add_argument("--out", required=True, help="the oracle store to write")
    args = parser.parse_args()
    dataset = VOCDataset(args.data, "train", resolve_classes(load_config(None, [f"data.root={args.data}"])))
    store, out = ProposalStore(args.store), ProposalStore(args.out)
    out.write_meta({**store.read_meta(), "oracle_of": str(args.store)})
    best = []
    for image_id in tqdm(dataset.ids, desc="oracle", unit="img"):
        ann = dataset.annotation(image_id)
        if not ann.boxes:
            continue
        boxed = BoxedPool.build(store.load(image_id, expected_shape=(ann.height, ann.width)),
                                ann.boxes_array(), ann.labels_array())
        gt_iou = candidate_gt_iou(boxed, gt_atom_histogram(dataset.mask(image_id), boxed.pool.atoms, dataset.num_classes))
        best.append(gt_iou.max(axis=0))
        out.save(image_id, oracle_pool(boxed, gt_iou))
    print(f"{args.out}: {sum(len(b) for b in best)} boxes, mean GT IoU of the oracle candidate {np.concatenate(best).mean():.4f}")


if __name__ == "__main__":
    main()
