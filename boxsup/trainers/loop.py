"""The BoxSup training loop of one worker (Sec. 4.3): label-update round, epoch, evaluation, repeated.

The launcher (``boxsup.platform``) runs ``train_worker`` on every Ray Train worker, or once
in-process, with the job's context, label pool and metrics sink set (``boxsup.trainers.job``).
Round r's labels use the network after epoch r-1 (round 0: E_o alone), then epoch r trains on them.
Each worker runs the network over its share of the box images and sends per-atom mean costs to the
assignment pool, which writes the label maps; the training images are sharded by an
``EpochSampler`` (one loader for the run, its processes persistent); validation is sharded and its
confusion matrix summed. Rank 0 alone logs to MLflow and writes checkpoints.

Recovery is exact: every random draw of an epoch comes from a stream keyed on (seed, epoch, rank),
every rank holds rank 0's buffers after an epoch, and rank 0 never logs a step twice, so a run
restarted from any checkpoint (a killed worker, ``--resume`` after a killed driver) ends with the
same model and metrics as one that was never interrupted. A user's mistake found on a worker is
written to ``<run dir>/.user_error``; the restarted workers see it and stop at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from boxsup.assign.diagnostics import ChoiceDiagnostics
from boxsup.assign.rule import LabelUpdateRule
from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.dataset import SegmentationDataset
from boxsup.data.sources import build_datasets
from boxsup.errors import BoxSupError
from boxsup.evaluation.crf import CRFParams
from boxsup.evaluation.evaluate import evaluate
from boxsup.evaluation.figures import confusion_figure, label_evolution_figure
from boxsup.evaluation.metrics import ConfusionMatrix
from boxsup.models import model_from_config, on_device, parameter_groups
from boxsup.models.checkpoint import non_finite_names
from boxsup.models.kernels import configure_kernels, untuned_cudnn
from boxsup.models.precision import FP32, Precision, resolve_precision
from boxsup.trainers.artifacts import publish
from boxsup.trainers.epoch import EpochLoss, batch_log_probs, train_one_epoch
from boxsup.trainers.job import MetricsSink, TrainingJob, WorkerContext
from boxsup.trainers.label_rounds import figure_rounds, planned_rounds, rounds_to_delete
from boxsup.trainers.label_inputs import (
    AtomSums,
    SplitAtomCache,
    device_images,
    label_round_batches,
    reduce_to_atoms,
    same_size_groups,
)
from boxsup.trainers.weight_average import WeightAverage
from boxsup.trainers.training_set import EpochSampler, TrainingSet, loader_workers
from boxsup.utils.faults import Fault, kill
from boxsup.utils.storage import open_location

log = logging.getLogger(__name__)


@dataclass
class RoundSummary:
    """One label-update round, summed over all workers."""

    labelled: list[str]
    skipped: Counter
    boxes: int
    chosen_cost_sum: float
    confusions: dict[str, np.ndarray]  # "chosen" (the painted labels), "eo_best", "oracle", "kept" (the
    # painted labels off the void pixels): vs the audit images' masks
    diagnostics: ChoiceDiagnostics
    seconds: float
    cache_mb: float | None = None  # MiB the actors' pool caches hold after the round (rank 0 only)

    def metrics(self) -> dict[str, float | None]:
        """``pseudo_miou`` (the round's labels), ``pseudo_miou_eo_best`` / ``_oracle`` (the box's or the
        best available choice, on the same images), ``pseudo_miou_kept`` / ``void_share`` (with
        ``assign.void_k``: the labels off the void pixels, the share painted void), the choice
        diagnostics, cost, skips and time."""
        out: dict[str, float | None] = {}
        for name, matrix in self.confusions.items():
            confusion = ConfusionMatrix(len(matrix))
            confusion.matrix = matrix.astype(np.int64)
            out["pseudo_miou" if name == "chosen" else f"pseudo_miou_{name}"] = confusion.compute().miou if matrix.sum() else None
        kept, painted = self.confusions["kept"].sum(), self.confusions["chosen"].sum()
        out["void_share"] = 1.0 - kept / painted if kept else None  # only with assign.void_k
        return out | self.diagnostics.metrics() | {
            "mean_chosen_cost": self.chosen_cost_sum / max(self.boxes, 1),
            "skipped_images": float(sum(self.skipped.values())), "label_update_seconds": self.seconds,
            "assign_cache_mb": self.cache_mb}


CONFUSIONS = ("chosen", "eo_best", "oracle", "kept")


def summarize_round(ctx: WorkerContext, results: list, num_classes: int, started: float) -> tuple[RoundSummary, list[tuple[str, str | None]]]:
    """Every worker's image results, summed over the workers; and every (image id, skip reason)."""
    n = num_classes
    confusions = np.zeros((len(CONFUSIONS), n * n))
    diagnostics = ChoiceDiagnostics()
    for r in results:
        for row, name in enumerate(CONFUSIONS):
            for index, count in (r.confusion if name == "chosen" else r.reference_confusions.get(name, {})).items():
                confusions[row, index] += count
        if r.diagnostics is not None:
            diagnostics = diagnostics + r.diagnostics
    totals = ctx.all_reduce(np.array([sum(r.boxes for r in results), sum(r.chosen_cost_sum for r in results),
                                      *diagnostics.as_tuple()], dtype=np.float64))
    confusions = ctx.all_reduce(confusions).reshape(len(CONFUSIONS), n, n)
    outcomes = [item for part in ctx.all_gather([(r.image_id, r.skipped) for r in results]) for item in part]
    labelled = sorted(i for i, why in outcomes if why is None)
    skipped = Counter(why for _, why in outcomes if why is not None)
    diagnostics = ChoiceDiagnostics.from_tuple(totals[2:])
    return RoundSummary(labelled, skipped, int(totals[0]), float(totals[1]), dict(zip(CONFUSIONS, confusions)),
                        diagnostics, time.perf_counter() - started), outcomes


def label_round(
    ctx: WorkerContext, job: TrainingJob, model: torch.nn.Module | None, round_index: int,
    box_images: list[ImageAnnotation], dataset: SegmentationDataset, progress: bool, previous_round: int | None = None,
    cache: SplitAtomCache | None = None, precision: Precision = FP32, reported: set[tuple[str, str]] | None = None,
) -> RoundSummary:
    """One round over every box image: this worker's share through the network, all through the pool.

    The share goes through the network in batches of one image size, decoded (and its atom map split,
    unless ``cache`` holds it from an earlier round) in ``train.loader_workers`` processes; the network
    runs under ``precision``, and each image's costs are reduced, in float32, to per-atom means on the
    model's device. A skipped image is logged the first time its reason is not in ``reported``.
    """
    started = time.perf_counter()
    reported = reported if reported is not None else set()
    cfg, pool = job.config, job.pool
    kind = cfg["assign"]["pixel_cost"]
    flip = LabelUpdateRule.from_config(cfg).score_flip
    train = cfg.get("train", {})
    use_network = model is not None and cfg["assign"]["lam"] != 0
    mine = box_images[ctx.rank :: ctx.world]
    scored = [a for a in mine if use_network and a.boxes]
    scored_ids = {a.image_id for a in scored}
    for ann in mine:  # E_o alone: nothing to compute on this side
        if ann.image_id not in scored_ids:
            pool.submit(round_index, ann.image_id, None, previous_round)
    cache = cache if cache is not None else SplitAtomCache(0)
    batches = label_round_batches(dataset, job.proposal_store, scored, cache,
                                  max(1, train.get("batch_size", 1) // ctx.world),
                                  loader_workers(train.get("loader_workers"), ctx.device))
    queued: list[tuple[list[str], AtomSums]] = []  # a batch's sums travel to the host while the next is queued
    failed: list[str] = []

    def submit_queued() -> None:
        for image_ids, sums in queued:
            for image_id, means in zip(image_ids, sums.means()):
                pool.submit(round_index, image_id, means, previous_round)
        for image_id in failed:  # a missing or corrupt proposal file: the actor reports the image as skipped
            pool.submit(round_index, image_id, None, previous_round)

    with untuned_cudnn(), tqdm(total=len(scored), desc=f"labels[round {round_index}]", leave=False,
                                disable=not progress, unit="img") as bar:
        for items in batches:
            launched = []
            for group in same_size_groups(items):
                image_ids = [scored[item.index].image_id for item in group]
                for item, image_id in zip(group, image_ids):
                    if item.split is not None:
                        cache.put(image_id, item.split)
                splits = [item.split if item.split is not None else cache.get(i) for item, i in zip(group, image_ids)]
                log_probs = batch_log_probs(model, device_images(group, ctx.device), ctx.device, flip, precision)
                launched.append((image_ids, reduce_to_atoms(splits, log_probs, kind)))
            submit_queued()
            queued, failed = launched, [scored[item.index].image_id for item in items if item.image is None]
            bar.update(len(items))
        submit_queued()
    summary, outcomes = summarize_round(ctx, pool.collect(), dataset.num_classes, started)
    summary.cache_mb = pool.cache_mb() if ctx.rank == 0 else None
    for image_id, why in outcomes:
        if why is not None and ctx.rank == 0 and (image_id, why) not in reported:
            reported.add((image_id, why))
            log.warning("%s: %s; skipped in round %d (logged once: every round counts it in skipped_images)",
                        image_id, why, round_index)
    return summary


def distributed_evaluate(ctx: WorkerContext, model: torch.nn.Module, dataset: SegmentationDataset, cfg: dict,
                         progress: bool, precision: Precision = FP32) -> ConfusionMatrix:
    """Every worker scores its share of the split, the network under ``precision`` (probabilities, CRF and
    scores in float32); the confusion matrices are summed."""
    crf_params = CRFParams.of_config(cfg)
    with precision.autocast(ctx.device), untuned_cudnn():
        confusion = evaluate(model, dataset, ctx.device, tuple(cfg["eval"]["scales"]), cfg["eval"]["crf"], progress,
                             ids=dataset.ids[ctx.rank :: ctx.world], crf_params=crf_params)
    confusion.matrix = ctx.all_reduce(confusion.matrix).astype(np.int64)
    return confusion


def save_state(directory: Path, model, optimizer, scheduler, epoch: int, label_round: int, labelled: list[str],
               average: WeightAverage | None) -> None:
    """Tensors and plain types only: the state loads back with ``weights_only=True``."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "label_round": label_round, "labelled": list(labelled)}
    if average is not None:
        state["weight_average"] = average.state_dict()
    torch.save(state, directory / "state.pt")


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch's generator from (seed, epoch, rank): dropout and loader seeds of an epoch are the same
    whether the run got there without a break or restarted from the previous epoch's checkpoint."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def label_evolution_rows(annotations, dataset, labels: LabelStore, rounds: list[int], n_images: int = 4):
    """Rows for the label-evolution figure: a few box-supervised images across rounds."""
    picked = (a for a in annotations if a.supervision == Supervision.BOX and labels.has(rounds[0], a.image_id))
    rows = []
    for ann in itertools.islice(picked, n_images):  # lazily: a store request per image looked at
        maps = [(f"round {r}", labels.read(r, ann.image_id)) for r in rounds if labels.has(r, ann.image_id)]
        rows.append((ann.image_id, dataset.image(ann.image_id), dataset.mask(ann.image_id), maps))
    return rows


def final_artifacts(job: TrainingJob, logger: MetricsSink, model, confusion: ConfusionMatrix, classes, annotations, dataset, rounds: list[int]) -> None:
    """Rank 0 after the last epoch: per-class IoU, figures, the checkpoint (made locally, into the run dir
    and MLflow), then result.json."""
    run_dir = open_location(job.run_dir)
    names = ["background", *classes]
    scores = confusion.compute()
    class_iou = {name: float(v) for name, v in zip(names, scores.class_iou)}
    logger.log_metrics({f"val_iou_{n}": v for n, v in class_iou.items() if np.isfinite(v)}, step=job.config["train"]["epochs"])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        confusion_figure(confusion.matrix, names, local / "confusion_matrix.png")
        publish(local / "confusion_matrix.png", run_dir, logger, "figures")
        if rounds:
            chosen = figure_rounds(planned_rounds(job.config))  # kept by the retention policy
            rows = label_evolution_rows(annotations, dataset, LabelStore(job.label_store), chosen)
            if rows:
                label_evolution_figure(rows, local / "label_evolution.png")
                publish(local / "label_evolution.png", run_dir, logger, "figures")
        torch.save({"model": model.state_dict(), "config": job.config, "classes": list(classes)}, local / "checkpoint.pt")
        publish(local / "checkpoint.pt", run_dir, logger, "checkpoint")
    result = {"val_miou": scores.miou, "val_pixel_accuracy": scores.pixel_accuracy, "class_iou": class_iou}
    run_dir.write_bytes("result.json", json.dumps(result, indent=2).encode())


USER_ERROR_FILE = ".user_error"


def train_worker(job: TrainingJob) -> None:
    """The per-worker training function, run by the launcher with ``job.context`` set.

    A user's mistake (``BoxSupError``) is recorded in the run directory before it is raised; Ray
    Train then restarts the workers, which find the record and return at once (no retries spent
    on a mistake that would only happen again); the driver reports the recorded line.
    """
    run_dir = open_location(job.run_dir)
    if run_dir.exists(USER_ERROR_FILE):
        return
    try:
        _train(job.context, job)
    except BoxSupError as exc:
        run_dir.write_bytes(USER_ERROR_FILE, str(exc).encode())
        raise


def _train(ctx: WorkerContext, job: TrainingJob) -> None:
    cfg, t = job.config, job.config["train"]
    progress = ctx.rank == 0 and job.progress
    seed = cfg["seed"]
    torch.manual_seed(seed)
    if t["num_threads"]:
        torch.set_num_threads(t["num_threads"])
    configure_kernels(ctx.device, t.get("deterministic", False))  # False for a run recorded before the key
    train_data, val_data = build_datasets(cfg)
    classes = train_data.classes
    annotations = job.annotations
    box_images = [a for a in annotations if a.supervision == Supervision.BOX]
    mask_images = [a for a in annotations if a.supervision == Supervision.MASK]

    model = on_device(model_from_config(cfg["model"], train_data.num_classes), ctx.device)
    optimizer = torch.optim.SGD(parameter_groups(model, t["lr"]), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t["lr_step"], gamma=t["lr_gamma"])
    start_epoch, label_round_index, labelled = 0, 0, []
    decay = LabelUpdateRule.from_config(cfg).ema
    average = WeightAverage(model, decay) if decay > 0 else None
    state = ctx.load_checkpoint()
    if state is not None:
        if bad := non_finite_names(state["model"]):
            raise BoxSupError(f"{job.run_dir}: the checkpoint of epoch {state['epoch']} holds NaN or infinite weights "
                              f"(e.g. {bad[0]}); start a new run with a lower train.lr")
        model.load_state_dict(state["model"])
        if average is not None and "weight_average" in state:
            average.load_state_dict(state["weight_average"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rebase_learning_rate(optimizer, scheduler, parameter_groups(model, t["lr"]))
        start_epoch, label_round_index, labelled = state["epoch"] + 1, state["label_round"], state["labelled"]
        log.info("resuming after epoch %d (labels of round %d) at learning rate %g", state["epoch"], label_round_index,
                 optimizer.param_groups[0]["lr"])
    precision = resolve_precision(precision_setting(t), ctx.device)
    network = ctx.wrap_model(model)
    if t.get("compile"):
        network = torch.compile(network)
    scaler = precision.grad_scaler(ctx.device)
    logger = job.logger if ctx.rank == 0 else None
    logged = logger.logged_steps("train_loss") if logger is not None else set()  # by an earlier attempt
    fault: Fault | None = job.fault
    labels = LabelStore(job.label_store)
    training_set = TrainingSet(train_data, mask_images + box_images, labels, cfg["data"]["crop_size"], seed)
    position = {a.image_id: i for i, a in enumerate(training_set.annotations)}
    sampler = EpochSampler(ctx.world, ctx.rank, seed)
    workers = loader_workers(t["loader_workers"], ctx.device)
    loader = DataLoader(training_set, batch_size=max(1, t["batch_size"] // ctx.world), sampler=sampler,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None)  # one loader for the run: its processes persist
    rounds = labels.rounds(up_to=label_round_index) if state is not None else []
    confusion = None
    split_atoms = SplitAtomCache(int(t["label_cache_mb"] * 2**20))  # kept across rounds
    reported_skips: set[tuple[str, str]] = set()  # (image id, reason) of skips already logged

    for epoch in range(start_epoch, t["epochs"]):
        seed_epoch(seed, epoch, ctx.rank)
        metrics: dict[str, float | None] = {}
        update = epoch == 0 or (cfg["assign"]["update"] and epoch >= cfg["assign"]["warmup_epochs"])
        if box_images and update:
            scorer = (average.model if average is not None else model) if epoch else None
            summary = label_round(ctx, job, scorer, epoch, box_images, train_data, progress,
                                  previous_round=rounds[-1] if rounds else None, cache=split_atoms, precision=precision,
                                  reported=reported_skips)
            label_round_index, labelled = epoch, summary.labelled
            rounds.append(epoch)
            metrics.update(summary.metrics())
            if ctx.rank == 0:
                pseudo = metrics["pseudo_miou"]
                log.info("round %d: %d images labelled, %d skipped, pseudo-label mIoU %s, %.1f s", epoch,
                         len(labelled), sum(summary.skipped.values()), f"{pseudo:.4f}" if pseudo is not None else "-",
                         summary.seconds)
        labelled_ids = set(labelled)
        sampler.start_epoch(epoch, label_round_index, [position[a.image_id] for a in mask_images] +
                            [position[a.image_id] for a in box_images if a.image_id in labelled_ids])
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        killed = fault is not None and ctx.rank == ctx.world - 1 and fault.fires("kill-worker", epoch)
        batches = kill_after_first_batch(loader) if killed else loader
        loss = stop_if_diverged(ctx, model, train_one_epoch(network, batches, optimizer, ctx.device, progress,
                                                            precision, scaler), epoch, lr, precision, job.run_dir)
        ctx.broadcast_buffers(model)
        if average is not None:
            average.update(model)
        scheduler.step()
        metrics.update(train_loss=loss, lr=lr, epoch_seconds=time.perf_counter() - started)
        if epoch == t["epochs"] - 1 or (epoch + 1) % cfg["eval"]["every"] == 0:
            confusion = distributed_evaluate(ctx, model, val_data, cfg, progress, precision)
            scores = confusion.compute()
            metrics.update(val_miou=scores.miou, val_pixel_accuracy=scores.pixel_accuracy)
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0:
                save_state(Path(tmp), model, optimizer, scheduler, epoch, label_round_index, labelled, average)
            first = ("val_miou", "train_loss", "pseudo_miou")  # the columns Tune's progress table shows
            ordered = {k: metrics[k] for k in first if k in metrics} | metrics
            ctx.report({k: v for k, v in ordered.items() if v is not None} | {"epoch": epoch},
                       Path(tmp) if ctx.rank == 0 else None)
        if ctx.rank == 0:  # the checkpoint now saved reads round label_round_index: older ones may go
            for old_round in rounds_to_delete(cfg, labels.rounds(up_to=epoch), label_round_index):
                labels.remove_round(old_round)
        if logger is not None and epoch not in logged:  # a re-run epoch has the same values: log them once
            logger.log_metrics(metrics, step=epoch)
            log.info("epoch %d: loss %.4f%s", epoch, loss,
                     f", val mIoU {metrics['val_miou']:.4f}" if "val_miou" in metrics else "")
        if fault is not None and ctx.rank == 0:
            inject_fault(fault, epoch, job.driver_pid)

    if confusion is None:  # restarted after the last epoch's checkpoint: score the model it holds
        confusion = distributed_evaluate(ctx, model, val_data, cfg, progress, precision)
    if ctx.rank == 0:
        final_artifacts(job, logger, model, confusion, classes, annotations, train_data, rounds)


def precision_setting(train: dict) -> str:
    """``train.precision``; a run recorded before it existed has ``train.amp`` (true: auto, false: fp32)."""
    return train.get("precision") or ("auto" if train.get("amp", True) else "fp32")


def rebase_learning_rate(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.StepLR,
                         fresh_groups: list[dict]) -> None:
    """After loading a checkpoint's optimizer and schedule: base rates from the config (``fresh_groups``,
    the groups ``parameter_groups`` makes from ``train.lr``), each group's current rate scaled with its
    base, so a resume with a lower ``train.lr`` continues the schedule from the lower rate."""
    for group, base, fresh in zip(optimizer.param_groups, scheduler.base_lrs, fresh_groups):
        group["lr"] *= fresh["lr"] / base
        group["initial_lr"] = fresh["lr"]
    scheduler.base_lrs = [fresh["lr"] for fresh in fresh_groups]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def stop_if_diverged(ctx: WorkerContext, model: torch.nn.Module, loss: EpochLoss, epoch: int, lr: float,
                     precision: Precision, run_dir: str) -> float:
    """The epoch's mean loss over all ranks; a NaN or infinite loss or weight on any rank stops every rank
    with one line, before the epoch's checkpoint, label round or model can be made from those weights."""
    bad_weights = len(non_finite_names(model.state_dict()))
    world = ctx.all_reduce(np.array([loss.total, loss.images, loss.first_bad_step >= 0, bad_weights], dtype=np.float64))
    if world[2] == 0 and world[3] == 0:
        return float(world[0] / max(world[1], 1))
    steps = ctx.all_gather(loss.first_bad_step)  # every rank is here: the sums above are the same on all
    where = f"step {min(s for s in steps if s >= 0)}" if world[2] else "its last step"
    advice = " or train.precision=bf16/fp32" if precision.name == "fp16" else ""
    resume = (f"continue from epoch {epoch - 1}'s checkpoint with a lower rate: boxsup train --resume {run_dir} "
              f"--set train.lr=LOWER" if epoch else "start again with a lower train.lr")
    raise BoxSupError(f"training diverged in epoch {epoch} at {where}: the loss or the weights became NaN or "
                      f"infinite at learning rate {lr:g} ({precision.name}); nothing of this epoch was saved; "
                      f"lower train.lr{advice} and {resume}")


def inject_fault(fault: Fault, epoch: int, driver_pid: int | None) -> None:
    """Rank 0's test hooks after epoch ``epoch`` is checkpointed and logged (see ``boxsup.utils.faults``)."""
    if fault.fires("raise", epoch):
        raise RuntimeError(f"injected failure after epoch {epoch} (BOXSUP_FAULT)")
    if driver_pid and fault.fires("kill-driver", epoch):
        kill(driver_pid)


def kill_after_first_batch(loader):
    """The loader's batches; this process is SIGKILLed when the second is asked for (mid-epoch)."""
    for index, batch in enumerate(loader):
        if index == 1:
            kill()
        yield batch
