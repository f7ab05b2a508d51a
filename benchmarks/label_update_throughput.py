"""Label-update throughput per core at VOC size, given the network's outputs, and bytes per image.

    python benchmarks/label_update_throughput.py --images 20 [--compare]

Renders demo-style scenes at 500x375 with 1-4 boxes, builds Selective Search pools (about 2,000
candidates), draws random log-probabilities as a network would produce, then times on one core the
label update of one image, split where the platform splits it:

- worker: e = 1 - P for the image's labels and its reduction to per-atom means (float16: what is
  sent), over the split atom map the worker keeps from the first round (``SplitAtoms``);
- actor: the label update a run with the default config makes (``LabelUpdateRule.from_config``: E_o +
  E_c + E_r, the draw), painting, the PNG written atomically, GT statistics;
- first round only: the worker reads and splits the atom map, the actor loads the pool from the
  store and refines it (both cached afterwards).

``--compare`` also times the worker's work as it was before the split maps were kept (read the
proposal file, split, reduce the full cost map every round) on the same images, in the same run.
The network's forward pass is not counted.

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
import torch  # noqa: E402

from boxsup.assign.assign import atom_mean_costs  # noqa: E402
from boxsup.assign.assigner import AssignmentSpec  # noqa: E402
from boxsup.assign.rule import LabelUpdateRule  # noqa: E402
from boxsup.config import DEFAULTS  # noqa: E402
from boxsup.data.annotations import Box  # noqa: E402
from boxsup.data.synth import DEMO_CLASSES, synth_sample  # noqa: E402
from boxsup.data.voc import write_split, write_voc_sample  # noqa: E402
from boxsup.platform.assign_pool import SpecAssigner  # noqa: E402
from boxsup.proposals.pool import split_atoms_by_boxes  # noqa: E402
from boxsup.proposals.selective_search import selective_search  # noqa: E402
from boxsup.proposals.store import ProposalStore  # noqa: E402
from boxsup.trainers.label_inputs import SplitAtoms  # noqa: E402


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
    parser.add_argument("--compare", action="store_true", help="also time the worker's per-round work as before")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU clock (a machine shared with other jobs) instead of the wall clock")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(1)
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
    rule = LabelUpdateRule.from_config(DEFAULTS)  # what a run with the default config uses
    assigner = SpecAssigner(AssignmentSpec(data, DEMO_CLASSES, str(store.root), f"{work}/labels", rule, 0))
    rng = np.random.default_rng(0)
    num_classes = len(DEMO_CLASSES) + 1

    splits: dict[str, SplitAtoms] = {}
    rows: dict[str, list[float]] = {name: [] for name in ROWS}
    sent, returned, atoms_per_image = [], [], []
    for round_index in range(args.rounds + 1):
        for image_id in ids:
            ann = assigner.annotation(image_id)
            log_probs = torch.log_softmax(torch.from_numpy(rng.normal(size=(num_classes, 375, 500)).astype(np.float32)), 0)
            if round_index == 0:
                started = clock()
                splits[image_id] = SplitAtoms.build(store.load_atoms(image_id, expected_shape=(375, 500)), ann)
                rows["worker, first round only: read + split the atom map"].append(clock() - started)
                started = clock()
                assigner.pools.get(ann)  # load + refine + E_o (and E_c, kept with the default rule), once per run
                rows["actor, first round only: load + refine pool + E_o, E_c"].append(clock() - started)
                continue
            started = clock()
            sums = splits[image_id].mean_costs(log_probs, "error")
            worker = clock() - started
            started = clock()
            result = assigner.assign(round_index, image_id, sums)
            actor = clock() - started
            rows["worker: 1 - P and per-atom means (split map kept)"].append(worker)
            rows["actor: costs, sampling, paint, PNG, stats"].append(actor)
            rows["whole label update (losses in, label map written)"].append(worker + actor)
            if args.compare:
                costs = (1.0 - log_probs.exp()).numpy()  # what pixel_costs returned
                started = clock()
                atoms = split_atoms_by_boxes(store.load_atoms(image_id), ann.boxes_array())[0]
                before = atom_mean_costs(costs, atoms, ann.labels_array())
                rows["before: worker reads, splits, reduces every round"].append(clock() - started)
                inside = split_atoms_by_boxes(store.load_atoms(image_id), ann.boxes_array())[2].any(axis=1)
                assert np.array_equal(before[inside], sums[inside]), "the kept split map changed the means"
            sent.append(len(pickle.dumps((round_index, image_id, sums), protocol=5)))
            returned.append(len(pickle.dumps(result, protocol=5)))
            atoms_per_image.append(len(sums))

    print(f"{len(ids)} images of 500x375, {statistics.mean(candidates):.0f} candidates and "
          f"{statistics.mean(atoms_per_image):.0f} box-refined atoms per image on average; one core\n")
    print("| step | ms / image (mean) | ms / image (median) | images / s |\n|---|---|---|---|")
    for name, values in rows.items():
        if values:
            mean, median = statistics.mean(values) * 1e3, statistics.median(values) * 1e3
            print(f"| {name} | {mean:.1f} | {median:.1f} | {1e3 / mean:.0f} |")
    print(f"\nobject store per image: {statistics.mean(sent) / 1024:.1f} KB sent (per-atom mean costs), "
          f"{statistics.mean(returned) / 1024:.2f} KB returned (max {max(sent) / 1024:.1f} KB sent)")


ROWS = ("worker: 1 - P and per-atom means (split map kept)", "actor: costs, sampling, paint, PNG, stats",
        "whole label update (losses in, label map written)", "worker, first round only: read + split the atom map",
        "actor, first round only: load + refine pool + E_o, E_c",
        "before: worker reads, splits, reduces every round")


if __name__ == "__main__":
    main()
