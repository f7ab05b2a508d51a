"""Label-update throughput per core at VOC size, given the network's outputs, and bytes per image.

    python benchmarks/label_update_throughput.py --images 20

Renders demo-style scenes at 500x375 with 1-4 boxes, builds Selective Search pools (about 2,000
candidates), draws random per-pixel costs as a network would produce, then times on one core the
label update of one image, split where the platform splits it:

- worker: split the atom map by the boxes, reduce the costs to per-atom means (float16: what is sent);
- actor: E_o + E_r, top-k sampling, painting, the PNG written atomically, GT statistics;
- actor, first round only: loading the pool from the store and refining it (cached afterwards).

Bytes through the object store per image: the pickled loss sums sent, and the result returned.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from boxsup.assign.assign import atom_mean_costs  # noqa: E402
from boxsup.config import DEFAULTS  # noqa: E402
from boxsup.data.annotations import Box  # noqa: E402
from boxsup.data.synth import DEMO_CLASSES, synth_sample  # noqa: E402
from boxsup.data.voc import write_split, write_voc_sample  # noqa: E402
from boxsup.platform.assign_pool import Assigner, AssignmentSpec  # noqa: E402
from boxsup.proposals.pool import split_atoms_by_boxes  # noqa: E402
from boxsup.proposals.selective_search import selective_search  # noqa: E402
from boxsup.proposals.store import ProposalStore  # noqa: E402


def scene(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, list]:
    """A 500x375 demo-style image (the 500-px square scene, cropped), its mask and boxes."""
    sample = synth_sample(seed, index, size=500)
    image, mask = sample.image[:375], sample.mask[:375]
    boxes = []
    for box in sample.boxes:
        if box.y0 < 375 - 8:
            boxes.append(Box(box.x0, box.y0, box.x1, min(box.y1, 375), box.label))
    return image, mask, boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the first (cached pools)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    work = tempfile.mkdtemp(prefix="boxsup-bench-")
    store = ProposalStore(f"{work}/store")
    ids, candidates = [], []
    for i in range(args.images):
        image, mask, boxes = scene(7, i)
        if not boxes:
            continue
        image_id = f"voc{i:04d}"
        write_voc_sample(f"{work}/data", image_id, image, boxes, DEMO_CLASSES, mask)
        pool = selective_search(image, mode="fast", max_candidates=2000)
        store.save(image_id, pool)
        ids.append(image_id)
        candidates.append(pool.n_candidates)
    write_split(f"{work}/data", "train", ids)
    data = {**DEFAULTS["data"], "root": f"{work}/data", "train_split": "train"}
    assigner = Assigner(AssignmentSpec(data, DEMO_CLASSES, str(store.root), f"{work}/labels", 3.0, 5, 0))
    rng = np.random.default_rng(0)
    num_classes = len(DEMO_CLASSES) + 1

    worker_s, actor_s, first_s, sent, returned, atoms_per_image = [], [], [], [], [], []
    for round_index in range(args.rounds + 1):
        for image_id in ids:
            ann = assigner.annotation(image_id)
            logits = rng.normal(size=(num_classes, 375, 500)).astype(np.float32)
            probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
            costs = 1.0 - probs  # what pixel_costs returns, e = 1 - P
            if round_index == 0:
                started = time.perf_counter()
                assigner.pools.get(ann)  # load + refine + E_o, once per run
                first_s.append(time.perf_counter() - started)
                continue
            started = time.perf_counter()
            atoms = split_atoms_by_boxes(store.load_atoms(image_id), ann.boxes_array())[0]
            sums = atom_mean_costs(costs, atoms, ann.labels_array())
            worker_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = assigner.assign(round_index, image_id, sums)
            actor_s.append(time.perf_counter() - started)
            sent.append(len(pickle.dumps((round_index, image_id, sums), protocol=5)))
            returned.append(len(pickle.dumps(result, protocol=5)))
            atoms_per_image.append(len(sums))

    total = [w + a for w, a in zip(worker_s, actor_s)]
    print(f"{len(ids)} images of 500x375, {statistics.mean(candidates):.0f} candidates and "
          f"{statistics.mean(atoms_per_image):.0f} box-refined atoms per image on average; one core\n")
    print("| step | ms / image (mean) | ms / image (median) | images / s |\n|---|---|---|---|")
    for name, values in [("worker: split atoms + reduce costs", worker_s), ("actor: costs, sampling, paint, PNG, stats", actor_s),
                         ("whole label update (losses in, label map written)", total),
                         ("actor, first round only: load + refine pool + E_o", first_s)]:
        mean, median = statistics.mean(values) * 1e3, statistics.median(values) * 1e3
        print(f"| {name} | {mean:.1f} | {median:.1f} | {1e3 / mean:.0f} |")
    print(f"\nobject store per image: {statistics.mean(sent) / 1024:.1f} KB sent (per-atom mean costs), "
          f"{statistics.mean(returned) / 1024:.2f} KB returned (max {max(sent) / 1024:.1f} KB sent)")


if __name__ == "__main__":
    main()
