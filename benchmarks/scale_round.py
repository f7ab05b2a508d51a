"""Scale rehearsal: one label round over a simulated 144k-image training set at VOC size, on this machine.

    python benchmarks/scale_round.py --images 144000 --pools 12 --timed 2000

Renders ``--pools`` photo-like 500x375 images with boxes (``boxsup.data.synth_photo``), computes their
Selective Search pools (timed: the proposal core-seconds per image), and stores them; the store then
holds ``--images`` ids, each a hard link to one of those pools (distinct ids, the real files, the
real sizes). An actor's body (``Assigner``, the code each Ray actor runs) labels the ids of one
shard for two rounds by the default config's label update (``LabelUpdateRule.from_config``): round 0
(no network: load, refine and pack the pool with E_o and E_c, paint, write the PNG) and round 1
(per-atom means of a random network output: costs, sampling, paint, write), with its cache bounded
by ``assign.cache_mb``. ``--timed`` ids are timed per round (CPU time, one core), spread over
the whole id range; the actor's cache bytes and the process's peak memory are read afterwards.
The worker side of a round (network, reduction to per-atom means) is measured by
``label_update_throughput.py``; docs/scale.md adds the two.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from boxsup.assign.assigner import Assigner, AssignmentSpec  # noqa: E402
from boxsup.assign.rule import LabelUpdateRule  # noqa: E402
from boxsup.config import DEFAULTS  # noqa: E402
from boxsup.data.annotations import Box, ImageAnnotation  # noqa: E402
from boxsup.data.dataset import SegmentationDataset  # noqa: E402
from boxsup.data.label_store import LabelStore  # noqa: E402
from boxsup.data.sources import build_training_set  # noqa: E402
from boxsup.data.voc import write_split, write_voc_sample  # noqa: E402
from boxsup.proposals.selective_search import selective_search  # noqa: E402
from boxsup.proposals.store import ProposalStore  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pool_memory import voc_sized  # noqa: E402

MB = 1024 * 1024
CLASSES = tuple(f"class{i}" for i in range(1, 6))


class ReplicatedDataset(SegmentationDataset):
    """``n`` ids, ``sim_000000`` ..., each the annotation of base image ``i % len(base)`` (no masks)."""

    def __init__(self, base: SegmentationDataset, n: int):
        self.base, self.name, self.classes, self.list_file, self.skips = base, "sim", base.classes, base.list_file, base.skips
        self.ids = [f"sim_{i:06d}" for i in range(n)]
        self._annotations = [base.annotation(i) for i in base.ids]

    def _base_index(self, image_id: str) -> int:
        return int(image_id[4:]) % len(self._annotations)

    def image_path(self, image_id: str) -> Path:
        return self.base.image_path(self.base.ids[self._base_index(image_id)])

    def annotation(self, image_id: str) -> ImageAnnotation:
        ann = self._annotations[self._base_index(image_id)]
        return ImageAnnotation(image_id, ann.width, ann.height, list(ann.boxes), has_mask=False)

    def mask(self, image_id: str) -> None:
        return None


def make_pools(root: Path, n_pools: int, max_candidates: int) -> tuple[list[float], list[int]]:
    """Write the base images (VOC layout) and their pools; the Selective Search CPU seconds and file bytes."""
    store = ProposalStore(root / "base_store")
    seconds, sizes, ids = [], [], []
    for i in tqdm(range(n_pools), desc="pools", unit="img"):
        image, boxes, labels = voc_sized("photo", i)
        if not len(boxes):
            continue
        image_id = f"base_{i:03d}"
        write_voc_sample(root / "voc", image_id, image,
                         [Box(*map(int, b), int(min(c, len(CLASSES)))) for b, c in zip(boxes, labels)], CLASSES)
        started = time.process_time()
        pool = selective_search(image, mode="fast", max_candidates=max_candidates)
        seconds.append(time.process_time() - started)
        store.save(image_id, pool)
        sizes.append((root / "base_store" / f"{image_id}.npz").stat().st_size)
        ids.append(image_id)
    write_split(root / "voc", "train", ids)
    return seconds, sizes


def replicate_store(root: Path, base: SegmentationDataset, n: int) -> ProposalStore:
    """A store of ``n`` ids whose files are hard links to the base pools (real files, no copies)."""
    store_dir = root / "store"
    store_dir.mkdir()
    k = len(base.ids)
    for i in tqdm(range(n), desc="store ids", unit="id", mininterval=2):
        os.link(root / "base_store" / f"{base.ids[i % k]}.npz", store_dir / f"sim_{i:06d}.npz")
    return ProposalStore(store_dir)


def timed_round(assigner: Assigner, round_index: int, ids: list[str], rng: np.random.Generator) -> list[float]:
    """CPU seconds per image of one round over ``ids`` (round 0: E_o alone; later: random per-atom means)."""
    seconds = []
    for image_id in tqdm(ids, desc=f"round {round_index}", unit="img", mininterval=2):
        means = None
        if round_index > 0:
            n_atoms = assigner.pools.get(assigner.annotation(image_id)).pool.n_atoms
            k = 1 + len(np.unique(assigner.annotation(image_id).labels_array()))
            means = rng.random((n_atoms, k)).astype(np.float16)
        started = time.process_time()
        result = assigner.assign(round_index, image_id, means, round_index - 1 if round_index else None)
        seconds.append(time.process_time() - started)
        assert result.skipped is None, result.skipped
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=144_000, help="simulated training images")
    parser.add_argument("--pools", type=int, default=12, help="distinct VOC-size pools behind them")
    parser.add_argument("--timed", type=int, default=2000, help="images labelled and timed per round")
    parser.add_argument("--cache-mb", type=float, default=DEFAULTS["assign"]["cache_mb"])
    parser.add_argument("--max-candidates", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ss_seconds, file_bytes = make_pools(root, args.pools, args.max_candidates)
        data = {**DEFAULTS["data"], "root": str(root / "voc")}
        rule = LabelUpdateRule.from_config(DEFAULTS)  # what a run with the default config uses
        spec = AssignmentSpec(data, CLASSES, str(root / "store"), str(root / "labels"), rule, 0, cache_mb=args.cache_mb)
        base = build_training_set({"data": data}, CLASSES)
        replicate_store(root, base, args.images)
        assigner = Assigner(spec, ReplicatedDataset(base, args.images), LabelStore(spec.label_store))
        step = max(1, args.images // args.timed)
        ids = assigner.dataset.ids[::step][: args.timed]
        rng = np.random.default_rng(0)
        first = timed_round(assigner, 0, ids, rng)
        later = timed_round(assigner, 1, ids, rng)
        label_bytes = [(root / "labels" / "round_001" / f"{i}.png").stat().st_size for i in ids]
        cached = assigner.pools.nbytes / len(assigner.pools) if len(assigner.pools) else 0.0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        mean_ms = lambda xs: 1e3 * statistics.mean(xs)  # noqa: E731
        print(f"\n{args.images} simulated images over {len(file_bytes)} distinct 500x375 pools "
              f"(Selective Search fast, <= {args.max_candidates} candidates); {len(ids)} images timed per round, "
              "one core, CPU time\n")
        print("| quantity | value |\n|---|---|")
        print(f"| Selective Search, CPU s / image (mean of {len(ss_seconds)}) | {statistics.mean(ss_seconds):.2f} |")
        print(f"| proposal file, KB / image (mean) | {statistics.mean(file_bytes) / 1024:.0f} |")
        print(f"| actor, round 0 (load, refine, pack, E_o, E_c, paint, write), CPU ms / image | {mean_ms(first):.1f} |")
        print(f"| actor, later round (costs, sampling, paint, write), CPU ms / image | {mean_ms(later):.1f} |")
        print(f"| label map PNG, KB / image (mean) | {statistics.mean(label_bytes) / 1024:.1f} |")
        print(f"| cached pool, KB / image (mean, `BoxedPool.nbytes`) | {cached / 1024:.0f} |")
        print(f"| pools cached by this actor / cache budget MB | {len(assigner.pools)} / {args.cache_mb:.0f} |")
        print(f"| this process's peak resident memory, MB | {peak_mb:.0f} |")


if __name__ == "__main__":
    main()
