"""Training throughput and MFU on a GPU: a plain PyTorch loop against the project's own paths.

For each backbone, precision and layout, images/s of
  (a) a plain loop: the same model (``model_from_config``, ``parameter_groups``, SGD) on one in-memory
      batch, forward + backward + step (``sgd_step``, the step the epoch takes);
  (b) the project's epoch: ``train_one_epoch`` over the loop's DataLoader of ``TrainingSet`` (VOC-size
      JPEGs, random crops, label maps from a ``LabelStore``); channels-last only, the layout it feeds;
  (c) a label round: ``boxsup.trainers.label_round.label_round`` itself (loader workers, ``batch_log_probs``,
      ``reduce_to_atoms`` on the device, the in-process assignment pool), per image, cold (first
      round: atom maps split, pools loaded) and warm (both cached, as in later rounds), with the
      seconds spent waiting for the loader and in the assignment;
  (d) the loader alone: ``TrainingSet`` through a DataLoader with 0, 1, 2, 4 worker processes;
  (e) the label round's network pass alone (whole images and their mirror images, in memory): the
      bound (c) can reach, with cuDNN's benchmark mode off (as the round runs) and on;
  (p) a profiled training step: the operators taking the device's time.
MFU = FLOPs per image (``FlopCounterMode`` over one fp32 training step) x images/s / ``--peak``.
Timed regions start after warm-up steps and read the clock after a device synchronisation.

    python benchmarks/gpu_throughput.py --out gpu.json            # full size on the GPU
    python benchmarks/gpu_throughput.py --tiny --out tiny.json    # the small network, 64 px, CPU, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from boxsup.config import load_config
from boxsup.data.annotations import Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.synth import SynthSample, synth_sample, tight_box, write_synthetic_dataset
from boxsup.data.voc import VOC_CLASSES, VOCDataset
from boxsup.models import model_from_config, on_device, parameter_groups
from boxsup.models.kernels import configure_kernels
from boxsup.models.precision import Precision, resolve_precision
from boxsup.trainers.epoch import sgd_step, train_one_epoch
from boxsup.trainers.training_set import EpochSampler, TrainingSet, loader_workers

VOC_TRAIN_IMAGES = 10_582  # train_aug: the images one epoch and one label round of configs/voc_box.yaml see
H100_BF16_DENSE = 989e12  # FLOP/s, the H100/H200 SXM datasheet's dense bf16 rate


@dataclass(frozen=True)
class Sizes:
    """What one invocation measures and at what size."""

    backbones: tuple[str, ...]
    batch: int
    crop: int
    height: int  # of the JPEGs
    width: int
    steps: int  # timed steps of (a); timed batches of (b) after its warm-up batches
    warmup: int
    unique_images: int  # JPEGs written; an epoch cycles through them (decoding is the same work each time)
    label_images: int  # images of (c)
    label_proposals: str  # proposals.method of (c)'s candidate pools (ss needs OpenCV's contrib modules)
    loader_workers: tuple[int, ...]  # (d)
    loader_batches: int
    epoch_workers: tuple[int | None, ...]  # (b); None: the loop's own default (loader_workers(None, device))
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")


SS_OR_GRABCUT = "ss" if hasattr(cv2, "ximgproc") else "grabcut"  # Selective Search needs OpenCV contrib
FULL = Sizes(("vgg16_largefov", "deeplabv3_resnet50"), batch=20, crop=321, height=375, width=500, steps=20, warmup=5,
             unique_images=64, label_images=48, label_proposals=SS_OR_GRABCUT, loader_workers=(0, 1, 2, 4), loader_batches=8,
             epoch_workers=(None,))
TINY = Sizes(("small",), batch=4, crop=64, height=60, width=80, steps=3, warmup=1, unique_images=8, label_images=6,
             label_proposals=SS_OR_GRABCUT, loader_workers=(0, 1), loader_batches=3, epoch_workers=(None,),
             precisions=("fp32", "bf16"))  # fp16 autocast on a CPU is a slow emulation, not a path anyone trains on


@dataclass
class Row:
    """One measurement."""

    part: str  # a | b | c-cold | c-warm | d | e
    backbone: str = ""
    precision: str = ""
    layout: str = ""
    images_per_s: float = math.nan
    mfu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def voc_size_sample(seed: int, index: int, height: int, width: int) -> SynthSample:
    """The demo renderer's scene at ``max(height, width)`` px, cut to height x width (boxes re-fitted)."""
    sample = synth_sample(seed, index, max(height, width))
    instances = sample.instances[:height, :width]
    boxes = [tight_box(instances == k, box.label) for k, box in enumerate(sample.boxes) if (instances == k).any()]
    if not boxes:  # every object was cut off: keep the top-left corner's one as a whole-image object
        boxes = [replace(sample.boxes[0], x0=0, y0=0, x1=width, y1=height)]
    return SynthSample(np.ascontiguousarray(sample.image[:height, :width]), sample.mask[:height, :width], instances, boxes)


def write_voc_set(root: Path, sizes: Sizes, seed: int = 0) -> None:
    """A VOC-layout set of ``unique_images`` JPEGs (20 VOC class names; objects of the first 4), every
    train image's mask also written as its round-0 label map in ``root/labels``; rendered in parallel."""
    indices = range(1, sizes.unique_images + 1)
    with ProcessPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        samples = list(pool.map(voc_size_sample, [seed] * len(indices), indices, [sizes.height] * len(indices),
                                [sizes.width] * len(indices)))
    write_synthetic_dataset(root, sizes.unique_images, seed, 0.25, VOC_CLASSES, lambda i: samples[i - 1], "voc",
                            "VOC-size set")


def box_annotations(dataset: VOCDataset) -> list:
    return [replace(a, supervision=Supervision.BOX) for a in dataset.load_annotations(skip_bad=False)]


def training_set(root: Path, sizes: Sizes) -> TrainingSet:
    """``TrainingSet`` over the train split, every image's round-0 label map written to its ``LabelStore``."""
    dataset = VOCDataset(root, "train", VOC_CLASSES)
    annotations = box_annotations(dataset)
    labels = LabelStore(root / "labels")
    for ann in annotations:
        if not labels.has(0, ann.image_id):
            labels.write(0, ann.image_id, dataset.mask(ann.image_id))
    return TrainingSet(dataset, annotations, labels, sizes.crop, seed=0)


class EpochLoader:
    """The loop's loader (one ``DataLoader`` over an ``EpochSampler``, its processes persistent), with each
    epoch's images the training set's cycled to ``images`` draws (one Train worker)."""

    def __init__(self, data: TrainingSet, batch: int, workers: int, pin: bool, images: int):
        self.sampler = EpochSampler(1, 0, data.seed)
        self.order = [i % len(data) for i in range(images)]
        self.loader = DataLoader(data, batch_size=batch, sampler=self.sampler, num_workers=workers, pin_memory=pin,
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    def epoch(self, epoch: int) -> DataLoader:
        self.sampler.start_epoch(epoch, 0, self.order)
        return self.loader


def build(backbone: str, num_classes: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = model_from_config({"backbone": backbone, "weights": "none",
                               "output_stride": 8 if backbone != "small" else None}, num_classes)
    return on_device(model, device) if channels_last else model.to(device)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameter_groups(model, 1e-3), lr=1e-3, momentum=0.9, weight_decay=5e-4)


def random_batch(sizes: Sizes, num_classes: int, device: torch.device, channels_last: bool):
    images = torch.randn(sizes.batch, 3, sizes.crop, sizes.crop, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, num_classes, (sizes.batch, sizes.crop, sizes.crop), device=device)
    return images, targets


def flops_per_image(backbone: str, sizes: Sizes, num_classes: int, device: torch.device) -> float:
    """FLOPs of one fp32 training step (forward + backward) over a batch, divided by the batch."""
    model = build(backbone, num_classes, device, channels_last=True)
    images, targets = random_batch(sizes, num_classes, device, channels_last=True)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(images), targets).backward()
    return counter.get_total_flops() / sizes.batch


def time_plain(backbone: str, precision: Precision, channels_last: bool, sizes: Sizes, num_classes: int,
               device: torch.device, compiled: bool = False) -> tuple[float, float]:
    """(a): images/s and peak GPU memory (GiB) of ``steps`` plain steps after ``warmup`` (with ``compiled``,
    of the network under ``torch.compile``, as ``train.compile`` runs it; the warm-up compiles)."""
    model = build(backbone, num_classes, device, channels_last)
    model.train()
    optimizer, scaler = sgd(model), precision.grad_scaler(device)
    model = torch.compile(model) if compiled else model
    images, targets = random_batch(sizes, num_classes, device, channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(sizes.warmup):
        sgd_step(model, optimizer, images, targets, precision, scaler)
    sync(device)
    started = time.perf_counter()
    for _ in range(sizes.steps):
        loss = sgd_step(model, optimizer, images, targets, precision, scaler)
    sync(device)
    seconds = time.perf_counter() - started
    assert torch.isfinite(loss), "plain loop: non-finite loss"
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return sizes.steps * sizes.batch / seconds, memory


class ClockAfter:
    """The loader's batches; the clock starts (after a device sync) when batch ``start`` is asked for."""

    def __init__(self, loader: DataLoader, start: int, device: torch.device):
        self.loader, self.start, self.device = loader, start, device
        self.opened = time.perf_counter()
        self.started: float | None = None
        self.first_batch: float | None = None
        self.batches = 0

    def __iter__(self) -> Iterator:
        for index, batch in enumerate(self.loader):
            if index == 0:
                self.first_batch = time.perf_counter() - self.opened
            if index == self.start:
                sync(self.device)
                self.started = time.perf_counter()
            self.batches += 1
            yield batch


def time_epoch(backbone: str, precision: Precision, data: TrainingSet, workers: int, sizes: Sizes, num_classes: int,
               device: torch.device) -> dict[str, float]:
    """(b): one warm-up epoch, then one timed epoch of ``warmup + steps`` batches through ``train_one_epoch``,
    on one loader whose processes persist across the epochs (as the loop's)."""
    model = build(backbone, num_classes, device, channels_last=True)
    optimizer, scaler = sgd(model), precision.grad_scaler(device)
    loader = EpochLoader(data, sizes.batch, workers, device.type == "cuda", (sizes.warmup + sizes.steps) * sizes.batch)
    train_one_epoch(model, loader.epoch(0), optimizer, device, False, precision, scaler)
    opened = time.perf_counter()
    clocked = ClockAfter(loader.epoch(1), sizes.warmup, device)
    loss = train_one_epoch(model, clocked, optimizer, device, False, precision, scaler)
    ended = time.perf_counter()  # train_one_epoch has read its loss on the host: the device is done
    steady = (clocked.batches - sizes.warmup) * sizes.batch / (ended - clocked.started)
    return {"images_per_s": steady, "whole_epoch_images_per_s": clocked.batches * sizes.batch / (ended - opened),
            "first_batch_s": clocked.first_batch, "loss": loss.mean, "loader_workers": workers}


def time_loader(data: TrainingSet, workers: int, sizes: Sizes) -> dict[str, float]:
    """(d): images/s of decode + crop + collate with ``workers`` processes, after the first batch."""
    loader = iter(EpochLoader(data, sizes.batch, workers, False, (sizes.loader_batches + 1) * sizes.batch).epoch(0))
    next(loader)
    started = time.perf_counter()
    images = sum(len(next(loader)[0]) for _ in range(sizes.loader_batches))
    rate = images / (time.perf_counter() - started)
    del loader
    return {"images_per_s": rate, "images_per_s_per_process": rate / max(workers, 1), "workers": workers}


class TimedPool:
    """An assignment pool that counts the seconds its ``submit`` and ``collect`` take (the assignment)."""

    def __init__(self, pool):
        self.pool, self.seconds = pool, 0.0

    def __getattr__(self, name: str):
        return getattr(self.pool, name)

    def _timed(self, call: Callable, *args, **kwargs):
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def submit(self, *args, **kwargs) -> None:
        self._timed(self.pool.submit, *args, **kwargs)

    def collect(self, *args, **kwargs):
        return self._timed(self.pool.collect, *args, **kwargs)


def _build_proposals(root: str, store: str, method: str, ids: list[str]) -> None:
    from boxsup.proposals.generate import build_store
    from boxsup.proposals.store import ProposalStore

    build_store(VOCDataset(root, "train", VOC_CLASSES), ProposalStore(store), method, progress=False, ids=ids)


def label_setup(root: Path, sizes: Sizes, work: Path) -> tuple[dict, list, VOCDataset]:
    """The config, box annotations and dataset of (c); proposals built in parallel processes."""
    dataset = VOCDataset(root, "train", VOC_CLASSES)
    annotations = box_annotations(dataset)[: sizes.label_images]
    ids = [a.image_id for a in annotations]
    _build_proposals(str(root), str(work / "store"), sizes.label_proposals, [])  # meta.json, once
    chunks = [ids[i :: os.cpu_count() or 1] for i in range(os.cpu_count() or 1)]
    with ProcessPoolExecutor(len(chunks)) as pool:
        list(pool.map(_build_proposals, *zip(*[(str(root), str(work / "store"), sizes.label_proposals, c)
                                                for c in chunks if c])))
    cfg = load_config(None, [f"data.root={root}", "data.classes=voc", f"train.batch_size={sizes.batch}"])
    return cfg, annotations, dataset


def time_label_rounds(backbone: str, precisions: list[Precision], setup, sizes: Sizes, num_classes: int,
                      device: torch.device, work: Path) -> list[Row]:
    """(c): ``label_round`` once cold (first precision) and then warm for every precision."""
    import boxsup.trainers.label_round as rounds
    from boxsup.assign.assigner import AssignmentSpec
    from boxsup.assign.rule import LabelUpdateRule
    from boxsup.platform.assign_pool import LocalAssignmentPool
    from boxsup.platform.context import LocalContext
    from boxsup.trainers.job import TrainingJob
    from boxsup.trainers.label_inputs import SplitAtomCache

    cfg, annotations, dataset = setup
    run_dir = work / f"run-{backbone}"
    spec = AssignmentSpec(cfg["data"], VOC_CLASSES, str(work / "store"), str(run_dir / "labels"),
                          LabelUpdateRule.from_config(cfg), cfg["seed"])
    pool = TimedPool(LocalAssignmentPool(spec))
    batches = TimedBatches(rounds.label_round_batches)
    rounds.label_round_batches = batches  # the loader's share of a round: the time label_round waits for it
    cache = SplitAtomCache(int(cfg["train"]["label_cache_mb"] * 2**20))
    ctx = LocalContext(run_dir, device)
    model = build(backbone, num_classes, device, channels_last=True)
    rows, round_index = [], 1
    for position, precision in enumerate(precisions):
        job = TrainingJob(cfg, annotations, str(run_dir), spec.label_store, spec.proposal_store, logger=None, pool=pool)
        for part in ("c-cold", "c-warm") if position == 0 else ("warm-up", "c-warm"):  # warm-up: cudnn's tuning
            pool.seconds = batches.waited = batches.first = 0.0
            sync(device)
            summary = rounds.label_round(ctx, job, model, round_index, annotations, dataset, False, cache=cache,
                                       precision=precision)
            sync(device)
            round_index += 1
            if part == "warm-up":
                continue
            n = len(summary.labelled)
            rows.append(Row(part, backbone, precision.name, "channels-last", n / summary.seconds, extra={
                "images": n, "seconds": summary.seconds, "assign_seconds": pool.seconds,
                "loader_wait_seconds": batches.waited, "first_batch_seconds": batches.first,
                "network_and_reduction_seconds": summary.seconds - pool.seconds - batches.waited,
                "proposals": sizes.label_proposals, "skipped": sum(summary.skipped.values())}))
    rounds.label_round_batches = batches.make
    return rows


class TimedBatches:
    """``label_round_batches`` that counts the seconds its caller waits for the loader (and for the first batch)."""

    def __init__(self, make: Callable):
        self.make, self.waited, self.first = make, 0.0, 0.0

    def __call__(self, *args, **kwargs) -> Iterator:
        batches = iter(self.make(*args, **kwargs))  # a generator: the DataLoader starts at the first next()
        first = True
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - started
            self.waited += waited
            if first:
                self.first, first = waited, False
            if batch is None:
                return
            yield batch


def forward_flops_per_image(backbone: str, sizes: Sizes, num_classes: int, device: torch.device) -> float:
    """FLOPs of the label round's network pass over one whole image (height x width) and its mirror image."""
    model = build(backbone, num_classes, device, channels_last=True).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(2, 3, sizes.height, sizes.width, device=device).contiguous(memory_format=torch.channels_last))
    return counter.get_total_flops()


def time_forward(backbone: str, precision: Precision, sizes: Sizes, num_classes: int, device: torch.device,
                 tuned: bool) -> float:
    """(e): images/s of the label round's network pass alone (batches of whole images and their mirror
    images, no loading, no reduction): the bound a label round can reach; cuDNN benchmark mode on or off."""
    model = build(backbone, num_classes, device, channels_last=True).eval()
    images = torch.randn(2 * sizes.batch, 3, sizes.height, sizes.width, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = tuned
    try:
        with torch.no_grad(), precision.autocast(device):
            for _ in range(max(1, sizes.warmup // 2)):
                model(images)
            sync(device)
            started = time.perf_counter()
            for _ in range(sizes.steps // 2 or 1):
                model(images)
            sync(device)
    finally:
        torch.backends.cudnn.benchmark = previous
    return (sizes.steps // 2 or 1) * sizes.batch / (time.perf_counter() - started)


def profile_step(backbone: str, precision: Precision, sizes: Sizes, num_classes: int, device: torch.device,
                 top: int = 12) -> list[dict[str, Any]]:
    """(p): where a channels-last training step's device time goes: the ``top`` operators by self time
    (per input shape, so each convolution layer is its own row) over 3 profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    model = build(backbone, num_classes, device, channels_last=True)
    optimizer, scaler = sgd(model), precision.grad_scaler(device)
    images, targets = random_batch(sizes, num_classes, device, channels_last=True)
    for _ in range(2):
        sgd_step(model, optimizer, images, targets, precision, scaler)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(3):
            sgd_step(model, optimizer, images, targets, precision, scaler)
        sync(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: getattr(e, attribute), reverse=True)
    total = sum(getattr(e, attribute) for e in events) or 1.0
    return [{"op": e.key, "shapes": str(e.input_shapes)[:160], "ms_per_step": getattr(e, attribute) / 3e3,
             "share": getattr(e, attribute) / total} for e in events[:top]]


def device_description(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cpus": os.cpu_count()}
    if device.type == "cuda":
        info |= {"name": torch.cuda.get_device_name(device), "cudnn": torch.backends.cudnn.version(),
                 "cuda": torch.version.cuda}
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = None
    return info


def projection(rows: list[Row], backbone: str, precision: str) -> dict[str, Any] | None:
    """The label round against an epoch at VOC scale (10,582 images each), from the measured rates."""
    epoch = next((r for r in rows if r.part == "b" and r.backbone == backbone and r.precision == precision), None)
    label = next((r for r in rows if r.part == "c-warm" and r.backbone == backbone and r.precision == precision), None)
    if epoch is None or label is None:
        return None
    per_image = label.extra["seconds"] / label.extra["images"]
    assign_per_image = label.extra["assign_seconds"] / label.extra["images"]
    epoch_s = VOC_TRAIN_IMAGES / epoch.images_per_s
    round_s = VOC_TRAIN_IMAGES * per_image
    actors = max(1, (os.cpu_count() or 1) - 4)  # the cores beside one GPU worker's 4 loader processes
    round_actors_s = VOC_TRAIN_IMAGES * (per_image - assign_per_image + assign_per_image / actors)
    bound = next((r for r in rows if r.part == "e" and r.backbone == backbone and r.precision == precision
                  and not r.extra["cudnn_benchmark"]), None)
    bound_s = VOC_TRAIN_IMAGES / bound.images_per_s if bound is not None else math.nan
    return {"backbone": backbone, "precision": precision, "epoch_s": epoch_s, "label_round_s": round_s,
            "network_alone_s": bound_s, "network_alone_share": bound_s / epoch_s,
            "label_round_share": round_s / epoch_s, "actors": actors, "label_round_s_with_actors": round_actors_s,
            "label_round_share_with_actors": round_actors_s / epoch_s, "goal_share": 0.10}


def markdown(result: dict[str, Any]) -> str:
    """The rows as one markdown table, then the goals."""
    lines = ["| part | backbone | precision | layout | images/s | MFU | notes |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row["extra"].items())
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        lines.append(f"| {row['part']} | {row['backbone']} | {row['precision']} | {row['layout']} | "
                     f"{row['images_per_s']:.1f} | {mfu} | {notes} |")
    lines.append(f"\nMFU against a peak of {result['meta']['peak_flops'] / 1e12:.0f} TFLOP/s; "
                 f"FLOPs per image: {', '.join(f'{b} {f / 1e9:.1f} GFLOP' for b, f in result['flops_per_image'].items())}")
    for goal in result["goals"]:
        lines.append(f"- {goal}")
    return "\n".join(lines)


def goals(rows: list[Row], projections: list[dict]) -> list[str]:
    """The issue's three goals, each with the measured value."""
    out = []
    for b in [r for r in rows if r.part == "b"]:
        a = next((r for r in rows if r.part == "a" and r.layout == "channels-last" and r.backbone == b.backbone
                  and r.precision == b.precision), None)
        if a is not None:
            share = b.images_per_s / a.images_per_s
            out.append(f"(b) >= 90% of (a): {b.backbone} {b.precision} (loader workers {b.extra['loader_workers']}): "
                       f"{share:.0%} {'met' if share >= 0.9 else 'MISSED'}")
    for r in rows:
        if r.part == "a" and r.backbone == "vgg16_largefov" and r.precision == "bf16" and r.mfu is not None:
            out.append(f"VGG-16 LargeFOV bf16 >= 35% MFU: plain loop {r.layout} {r.mfu:.1%} "
                       f"{'met' if r.mfu >= 0.35 else 'MISSED'}")
    for r in rows:
        if r.part == "b" and r.backbone == "vgg16_largefov" and r.precision == "bf16" and r.mfu is not None:
            out.append(f"VGG-16 LargeFOV bf16 >= 35% MFU: project epoch {r.mfu:.1%} {'met' if r.mfu >= 0.35 else 'MISSED'}")
    for p in projections:
        out.append(f"label round <= 10% of an epoch's time at VOC scale ({VOC_TRAIN_IMAGES} images), {p['backbone']} "
                   f"{p['precision']}: epoch {p['epoch_s']:.0f} s, round {p['label_round_s']:.0f} s with the in-process "
                   f"assigner = {p['label_round_share']:.0%} of the epoch; with the assignment spread over {p['actors']} "
                   f"actors {p['label_round_s_with_actors']:.0f} s = {p['label_round_share_with_actors']:.0%}; the "
                   f"network pass alone {p['network_alone_s']:.0f} s = {p['network_alone_share']:.0%} "
                   f"{'met' if p['label_round_share_with_actors'] <= 0.1 else 'MISSED'}")
    return out


def run(sizes: Sizes, device: torch.device, peak: float, parts: str, out: Path | None,
        compiled: bool = False) -> dict[str, Any]:
    """Every part for every backbone and precision; the JSON (written after each part) and the rows."""
    configure_kernels(device, deterministic=False)  # as the training loop sets them
    precisions = [resolve_precision(name, device) for name in sizes.precisions]
    num_classes = len(VOC_CLASSES) + 1
    rows: list[Row] = []
    result: dict[str, Any] = {"meta": device_description(device) | {
        "peak_flops": peak, "date": datetime.date.today().isoformat(), "sizes": asdict(sizes)},
        "flops_per_image": {}, "forward_flops_per_image": {}, "rows": [], "projections": [], "goals": [],
        "profiles": {}}

    def save() -> None:
        projections = [p for b in sizes.backbones for name in sizes.precisions if (p := projection(rows, b, name))]
        result.update(rows=[asdict(r) for r in rows], projections=projections, goals=goals(rows, projections))
        if out is not None:
            out.write_text(json.dumps(result, indent=2))

    def mfu(backbone: str, rate: float) -> float:
        return rate * result["flops_per_image"][backbone] / peak

    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        work = Path(tmp)
        if set(parts) & set("bcd"):
            write_voc_set(work / "voc", sizes)
        data = training_set(work / "voc", sizes) if set(parts) & set("bd") else None
        if "d" in parts:
            for workers in sizes.loader_workers:
                d = time_loader(data, workers, sizes)
                rows.append(Row("d", layout="JPEG -> uint8 crops", images_per_s=d.pop("images_per_s"), extra=d))
                print(f"(d) {workers} workers: {rows[-1].images_per_s:.1f} images/s", flush=True)
            save()
        setup = label_setup(work / "voc", sizes, work) if "c" in parts else None
        for backbone in sizes.backbones:
            result["flops_per_image"][backbone] = flops_per_image(backbone, sizes, num_classes, device)
            if "a" in parts:
                for precision in precisions:
                    for channels_last in (False, True):
                        rate, memory = time_plain(backbone, precision, channels_last, sizes, num_classes, device)
                        rows.append(Row("a", backbone, precision.name, "channels-last" if channels_last else "NCHW",
                                        rate, mfu(backbone, rate), {"peak_gib": memory}))
                        print(f"(a) {backbone} {precision.name} {rows[-1].layout}: {rate:.1f} images/s", flush=True)
                        save()
                    if compiled:
                        started = time.perf_counter()
                        rate, memory = time_plain(backbone, precision, True, sizes, num_classes, device, compiled=True)
                        rows.append(Row("a", backbone, precision.name, "channels-last, compiled", rate,
                                        mfu(backbone, rate), {"peak_gib": memory,
                                                              "seconds_with_compilation": time.perf_counter() - started}))
                        print(f"(a) {backbone} {precision.name} compiled: {rate:.1f} images/s", flush=True)
                        save()
            if "b" in parts:
                for precision in precisions:
                    for setting in sizes.epoch_workers:
                        e = time_epoch(backbone, precision, data, loader_workers(setting, device), sizes, num_classes,
                                       device)
                        rate = e.pop("images_per_s")
                        rows.append(Row("b", backbone, precision.name, "channels-last", rate, mfu(backbone, rate), e))
                        print(f"(b) {backbone} {precision.name}: {rate:.1f} images/s, loss {e['loss']:.3f}", flush=True)
                        save()
            if "e" in parts:
                result["forward_flops_per_image"][backbone] = forward_flops_per_image(backbone, sizes, num_classes, device)
                for precision in precisions:
                    for tuned in (False, True) if device.type == "cuda" else (False,):
                        rate = time_forward(backbone, precision, sizes, num_classes, device, tuned)
                        rows.append(Row("e", backbone, precision.name, "channels-last", rate,
                                        rate * result["forward_flops_per_image"][backbone] / peak,
                                        {"cudnn_benchmark": tuned, "with_mirror_image": True}))
                        print(f"(e) {backbone} {precision.name} cudnn benchmark {tuned}: {rate:.1f} images/s", flush=True)
                        save()
            if "p" in parts:
                name = sizes.precisions[-1]
                result["profiles"][f"{backbone} {name}"] = profile_step(backbone, resolve_precision(name, device), sizes,
                                                                        num_classes, device)
                save()
            if "c" in parts:
                rows += time_label_rounds(backbone, precisions, setup, sizes, num_classes, device, work)
                print(f"(c) {backbone}: " + ", ".join(f"{r.part} {r.precision} {r.images_per_s:.1f} images/s"
                                                       for r in rows if r.part.startswith("c") and r.backbone == backbone), flush=True)
                save()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    save()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the small network at 64 px on the CPU: a smoke test")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu (always cpu with --tiny)")
    parser.add_argument("--peak", type=float, default=H100_BF16_DENSE,
                        help="peak FLOP/s for MFU (default 989e12: H100/H200 SXM dense bf16)")
    parser.add_argument("--parts", default="abcdep",
                        help="which of a, b, c, d, e (the label round's network alone), p (a profiled step) to run")
    parser.add_argument("--compile", action="store_true", help="(a) also with torch.compile, as train.compile runs it")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 20; tiny 3)")
    parser.add_argument("--backbones", nargs="+", help="default: vgg16_largefov deeplabv3_resnet50 (tiny: small)")
    parser.add_argument("--label-images", type=int, help="images of the label round (default 48)")
    parser.add_argument("--unique-images", type=int, help="JPEGs written (default 64; the label round takes its "
                                                           "images from them)")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "fp16", "bf16"),
                        help="default: fp32 fp16 bf16 (tiny: fp32 bf16)")
    parser.add_argument("--label-proposals", choices=("ss", "grabcut", "rectangles"),
                        help="candidate pools of the label round (default ss where OpenCV has ximgproc, else grabcut)")
    parser.add_argument("--epoch-workers", nargs="+", type=int,
                        help="loader processes of (b) (default: the loop's own, 4 on a GPU, 0 on a CPU)")
    parser.add_argument("--out", type=Path, help="the JSON, rewritten after every part")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    for name, value in (("steps", args.steps), ("label_images", args.label_images),
                        ("unique_images", args.unique_images), ("label_proposals", args.label_proposals)):
        if value is not None:
            sizes = replace(sizes, **{name: value})
    if args.backbones:
        sizes = replace(sizes, backbones=tuple(args.backbones))
    if args.precisions:
        sizes = replace(sizes, precisions=tuple(args.precisions))
    if sizes.label_images > sizes.unique_images:
        parser.error(f"--label-images {sizes.label_images}: at most --unique-images ({sizes.unique_images})")
    if args.epoch_workers:
        sizes = replace(sizes, epoch_workers=tuple(args.epoch_workers))
    device = torch.device("cpu" if args.tiny else args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny:
        torch.set_num_threads(1)
    result = run(sizes, device, args.peak, args.parts, args.out, args.compile)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
