"""Memory of one cached box-refined pool at VOC size, by component: the CSR form before, packed after.

    python benchmarks/pool_memory.py --images 10

Renders photo-like images (``boxsup.data.synth_photo``, resized to 500x375; ``--source demo``: the
demo-style scenes of label_update_throughput.py) with their boxes, runs Selective Search (fast,
at most 2,000 candidates) and builds the pool an actor caches. "Before" is the form the cache held
until the pools were packed: the refined ``CandidatePool`` (int32 atom map, CSR with int32 indices
and float32 ones) plus E_o and the box-membership of the atoms; "after" is ``BoxedPool.nbytes``
(``PackedPool``). Also times, on one core, building the pool (once per image while cached) and
one label update from per-atom means (costs, sampling, painting) with either form.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from boxsup.assign import LabelUpdateRule, assign_labels, image_rng  # noqa: E402
from boxsup.assign.assign import BoxedPool  # noqa: E402
from boxsup.assign.costs import overlap_cost  # noqa: E402
from boxsup.data.synth_photo import photo_sample  # noqa: E402
from boxsup.proposals.selective_search import selective_search  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from label_update_throughput import scene  # noqa: E402

KB = 1024


def voc_sized(source: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 500x375 RGB image, its boxes (N, 4) and labels (N,)."""
    if source == "demo":
        image, _, boxes = scene(7, index)
        return image, np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes]), np.array([b.label for b in boxes])
    sample = photo_sample(7, index, size=375)
    sx = 500 / sample.image.shape[1]
    image = cv2.resize(sample.image, (500, 375), interpolation=cv2.INTER_LINEAR)
    boxes = np.array([[round(b.x0 * sx), b.y0, min(500, round(b.x1 * sx)), b.y1] for b in sample.boxes])
    return image, boxes, np.array([b.label for b in sample.boxes])


def before_components(pool, boxes: np.ndarray) -> dict[str, int]:
    """Bytes of the CSR form the cache held before packing."""
    refined, inside = pool.refined_by_boxes(boxes)
    m = refined.membership
    return {"atom map": refined.atoms.nbytes, "membership: data (ones)": m.data.nbytes,
            "membership: indices": m.indices.nbytes, "membership: indptr": m.indptr.nbytes,
            "E_o, inside, boxes, labels": overlap_cost(pool, boxes).nbytes + inside.nbytes + boxes.nbytes + 16}


def after_components(boxed: BoxedPool) -> dict[str, int]:
    """Bytes of the packed form, by component (array data only; ``nbytes`` adds object overheads)."""
    p = boxed.pool
    return {"atom map": p.run_atoms.nbytes + p.run_lengths.nbytes + p.areas.nbytes,
            "membership: nests": sum(n.order.nbytes + n.start.nbytes + n.stop.nbytes + n.rows.nbytes for n in p.nests),
            "membership: rest (CSR, no data)": p.rest_rows.nbytes + p.rest_indptr.nbytes + p.rest_indices.nbytes,
            "E_o, inside, boxes, labels": sum(a.nbytes for a in (boxed.overlap, boxed.inside, boxed.boxes,
                                                                  boxed.labels, boxed.loss_labels))}


def cpu_ms(call, repeat: int = 3) -> float:
    """Best of ``repeat`` CPU times (ms): the machine may be shared."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        call()
        best = min(best, time.process_time() - started)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--source", choices=("photo", "demo"), default="photo")
    parser.add_argument("--max-candidates", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rows, stats = [], []
    for i in range(args.images):
        image, boxes, labels = voc_sized(args.source, i)
        if not len(boxes):
            continue
        pool = selective_search(image, mode="fast", max_candidates=args.max_candidates)
        boxed = BoxedPool.build(pool, boxes, labels)
        before, after = before_components(pool, boxes), after_components(boxed)
        csr = dataclasses.replace(boxed, pool=pool.refined_by_boxes(boxes)[0])
        means = np.random.default_rng(i).random((boxed.pool.n_atoms, len(boxed.loss_labels))).astype(np.float16)

        def update(form: BoxedPool) -> np.ndarray:
            sums = form.sums_from_means(means)
            rule = dataclasses.replace(LabelUpdateRule.paper(lam=3.0, k=5), region_cost="iou", sample_margin=0.1)
            return assign_labels(form, sums, rule, 1, image_rng(0, 1, str(i))).label_map

        assert np.array_equal(update(boxed), update(csr))
        build_before = cpu_ms(lambda: (pool.refined_by_boxes(boxes), overlap_cost(pool, boxes)))
        rows.append((before, after, boxed.nbytes))
        stats.append({"candidates": pool.n_candidates, "atoms": boxed.pool.n_atoms, "nnz": csr.pool.membership.nnz,
                      "nests": len(boxed.pool.nests), "rest": len(boxed.pool.rest_rows),
                      "build before": build_before, "build after": cpu_ms(lambda: BoxedPool.build(pool, boxes, labels)),
                      "update before": cpu_ms(lambda: update(csr)), "update after": cpu_ms(lambda: update(boxed)),
                      "consensus": cpu_ms(lambda: boxed.consensus_cost(0.1)),
                      "consensus KB": boxed.consensus_cost(0.1).nbytes / KB})
    mean = lambda key: statistics.mean(s[key] for s in stats)  # noqa: E731
    print(f"{len(rows)} {args.source} images of 500x375, Selective Search fast: on average {mean('candidates'):.0f} "
          f"candidates, {mean('atoms'):.0f} box-refined atoms, {mean('nnz') / 1e3:.0f}k non-zeros; "
          f"{mean('nests'):.1f} nests, {mean('rest'):.1f} candidates in the rest\n")
    print("| component | before: KB / pool (mean) | after: KB / pool (mean) |\n|---|---|---|")
    for key in dict.fromkeys([*rows[0][0], *rows[0][1]]):
        b = statistics.mean(r[0].get(key, 0) for r in rows) / KB
        a = statistics.mean(r[1].get(key, 0) for r in rows) / KB
        print(f"| {key} | {b:.0f} | {a:.0f} |")
    totals_before = [sum(r[0].values()) / KB for r in rows]
    totals_after = [r[2] / KB for r in rows]
    print(f"| **total** (after: `BoxedPool.nbytes`) | **{statistics.mean(totals_before):.0f}** "
          f"(max {max(totals_before):.0f}) | **{statistics.mean(totals_after):.0f}** (max {max(totals_after):.0f}) |")
    print("\n| one core, CPU ms / image (mean) | before | after |\n|---|---|---|")
    print(f"| build the cached pool (refine, E_o; after: + pack) | {mean('build before'):.1f} | "
          f"{mean('build after'):.1f} |")
    print(f"| label update from per-atom means (costs, sampling, paint) | {mean('update before'):.1f} | "
          f"{mean('update after'):.1f} |")
    print(f"| E_c at margin 0.1 (once per pool; the cache keeps it, {mean('consensus KB'):.0f} KB) | - | "
          f"{mean('consensus'):.1f} |")
    print("\nlabel maps identical with either form for every image")


if __name__ == "__main__":
    main()
