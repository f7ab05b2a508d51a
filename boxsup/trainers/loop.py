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
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from boxsup.data.annotations import Supervision
from boxsup.data.dataset import SegmentationDataset
from boxsup.data.label_store import LabelStore
from boxsup.data.sources import build_datasets
from boxsup.errors import BoxSupError
from boxsup.evaluation.evaluate import evaluate
from boxsup.evaluation.figures import confusion_figure, label_evolution_figure
from boxsup.evaluation.metrics import ConfusionMatrix
from boxsup.models import model_from_config, on_device, parameter_groups
from boxsup.models.checkpoint import non_finite_names
from boxsup.models.kernels import configure_kernels, untuned_cudnn
from boxsup.models.precision import FP32, Precision, resolve_precision
from boxsup.trainers.artifacts import publish
from boxsup.trainers.epoch import EpochLoss, train_one_epoch
from boxsup.trainers.job import MetricsSink, TrainingJob, WorkerContext
from boxsup.trainers.label_inputs import SplitAtomCache
from boxsup.trainers.label_round import label_round
from boxsup.trainers.settings import EvalSettings
from boxsup.trainers.training_set import EpochSampler, TrainingSet, loader_workers
from boxsup.trainers.weight_average import WeightAverage
from boxsup.utils.faults import Fault, kill
from boxsup.utils.storage import open_location

log = logging.getLogger(__name__)


def distributed_evaluate(ctx: WorkerContext, model: torch.nn.Module, dataset: SegmentationDataset,
                         settings: EvalSettings, progress: bool, precision: Precision = FP32) -> ConfusionMatrix:
    """Every worker scores its share of the split, the network under ``precision`` (probabilities, CRF and
    scores in float32; cuDNN untuned: whole images come in many sizes); the confusion matrices are summed."""
    with precision.autocast(ctx.device), untuned_cudnn():
        confusion = evaluate(model, dataset, ctx.device, settings.scales, settings.crf, progress,
                             ids=dataset.ids[ctx.rank :: ctx.world], crf_params=settings.crf_params)
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
    """Rank 0 after the last epoch: per-class IoU, figures, the checkpoint (made locally, into the run dir:
    MLflow gets it once, as the data of the run's model, which the driver logs from there), then result.json."""
    run_dir = open_location(job.run_dir)
    names = ["background", *classes]
    scores = confusion.compute()
    class_iou = {name: float(v) for name, v in zip(names, scores.class_iou)}
    logger.log_metrics({f"val_iou_{n}": v for n, v in class_iou.items() if np.isfinite(v)}, step=job.settings.train.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        confusion_figure(confusion.matrix, names, local / "confusion_matrix.png")
        publish(local / "confusion_matrix.png", run_dir, logger, "figures")
        if rounds:
            chosen = job.settings.schedule.figure_rounds()  # kept by the retention policy
            rows = label_evolution_rows(annotations, dataset, LabelStore(job.label_store), chosen)
            if rows:
                label_evolution_figure(rows, local / "label_evolution.png")
                publish(local / "label_evolution.png", run_dir, logger, "figures")
        torch.save({"model": model.state_dict(), "config": job.config, "classes": list(classes)}, local / "checkpoint.pt")
        publish(local / "checkpoint.pt", run_dir, None)  # not a run artifact: the model holds it (log_final_model)
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
    if job.context is None:
        raise ValueError("train_worker: the job has no worker context (the launcher sets one)")
    try:
        _train(job.context, job)
    except BoxSupError as exc:
        run_dir.write_bytes(USER_ERROR_FILE, str(exc).encode())
        raise


@dataclass
class Resumed:
    """Where a worker's loop starts: the first epoch to train, the label round in use and its images."""

    start_epoch: int = 0
    label_round: int = 0
    labelled: list[str] = field(default_factory=list)
    from_checkpoint: bool = False


def restore_state(ctx: WorkerContext, job: TrainingJob, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.StepLR, average: WeightAverage | None) -> Resumed:
    """The latest checkpoint's weights, optimizer, schedule and weight average loaded (the learning rates
    rebased on ``train.lr``); a fresh start where there is none. NaN or infinite weights are refused."""
    state = ctx.load_checkpoint()
    if state is None:
        return Resumed()
    if bad := non_finite_names(state["model"]):
        raise BoxSupError(f"{job.run_dir}: the checkpoint of epoch {state['epoch']} holds NaN or infinite weights "
                          f"(e.g. {bad[0]}); start a new run with a lower train.lr")
    model.load_state_dict(state["model"])
    if average is not None and "weight_average" in state:
        average.load_state_dict(state["weight_average"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rebase_learning_rate(optimizer, scheduler, parameter_groups(model, job.settings.train.lr))
    log.info("resuming after epoch %d (labels of round %d) at learning rate %g", state["epoch"], state["label_round"],
             optimizer.param_groups[0]["lr"])
    return Resumed(state["epoch"] + 1, state["label_round"], state["labelled"], from_checkpoint=True)


def _train(ctx: WorkerContext, job: TrainingJob) -> None:
    cfg, settings = job.config, job.settings
    t, seed = settings.train, settings.seed
    progress = ctx.rank == 0 and job.progress
    torch.manual_seed(seed)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    configure_kernels(ctx.device, t.deterministic)
    train_data, val_data = build_datasets(cfg)
    classes = train_data.classes
    annotations = job.annotations
    box_images = [a for a in annotations if a.supervision == Supervision.BOX]
    mask_images = [a for a in annotations if a.supervision == Supervision.MASK]

    model = on_device(model_from_config(cfg["model"], train_data.num_classes), ctx.device)
    optimizer = torch.optim.SGD(parameter_groups(model, t.lr), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_step, gamma=t.lr_gamma)
    average = WeightAverage(model, settings.rule.ema) if settings.rule.ema > 0 else None
    resumed = restore_state(ctx, job, model, optimizer, scheduler, average)
    label_round_index, labelled = resumed.label_round, resumed.labelled
    precision = resolve_precision(t.precision, ctx.device)
    network = ctx.wrap_model(model)
    if t.compile:
        network = cast(torch.nn.Module, torch.compile(network))  # an OptimizedModule: a Module that compiles
    scaler = precision.grad_scaler(ctx.device)
    logger = job.logger if ctx.rank == 0 else None
    logged = logger.logged_steps("train_loss") if logger is not None else set()  # by an earlier attempt
    fault: Fault | None = job.fault
    labels = LabelStore(job.label_store)
    training_set = TrainingSet(train_data, mask_images + box_images, labels, t.crop_size, seed)
    position = {a.image_id: i for i, a in enumerate(training_set.annotations)}
    sampler = EpochSampler(ctx.world, ctx.rank, seed)
    workers = loader_workers(t.loader_workers, ctx.device)
    loader = DataLoader(training_set, batch_size=t.batch_per_worker(ctx.world), sampler=sampler,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None)  # one loader for the run: its processes persist
    rounds = labels.rounds(up_to=label_round_index) if resumed.from_checkpoint else []
    confusion = None
    split_atoms = SplitAtomCache(int(t.label_cache_mb * 2**20))  # kept across rounds
    reported_skips: set[tuple[str, str]] = set()  # (image id, reason) of skips already logged

    for epoch in range(resumed.start_epoch, t.epochs):
        seed_epoch(seed, epoch, ctx.rank)
        metrics: dict[str, float | None] = {}
        if box_images and settings.schedule.updates_in(epoch):
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
        if epoch == t.epochs - 1 or (epoch + 1) % settings.eval.every == 0:
            confusion = distributed_evaluate(ctx, model, val_data, settings.eval, progress, precision)
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
            for old_round in settings.schedule.rounds_to_delete(labels.rounds(up_to=epoch), label_round_index):
                labels.remove_round(old_round)
        if logger is not None and epoch not in logged:  # a re-run epoch has the same values: log them once
            logger.log_metrics(metrics, step=epoch)
            log.info("epoch %d: loss %.4f%s", epoch, loss,
                     f", val mIoU {metrics['val_miou']:.4f}" if "val_miou" in metrics else "")
        if fault is not None and ctx.rank == 0:
            inject_fault(fault, epoch, job.driver_pid)

    if confusion is None:  # restarted after the last epoch's checkpoint: score the model it holds
        confusion = distributed_evaluate(ctx, model, val_data, settings.eval, progress, precision)
    if logger is not None:  # rank 0
        final_artifacts(job, logger, model, confusion, classes, annotations, train_data, rounds)


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
