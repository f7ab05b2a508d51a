"""The BoxSup training loop of one worker (Sec. 4.3): label-update round, epoch, evaluation, repeated.

Ray Train runs ``train_worker`` on every worker (``RayTrainContext``); without Ray it runs once
in-process (``LocalContext``). Round r's labels use the network after epoch r-1 (round 0: E_o
alone), then epoch r trains on them. Each worker runs the network over its share of the box images
and sends per-atom mean costs to the assignment pool, which writes the label maps; the training
images are sharded by a ``DistributedSampler``; validation is sharded and its confusion matrix
summed. Rank 0 alone logs to MLflow and writes checkpoints.

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
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from boxsup.assign.assign import atom_mean_costs
from boxsup.assign.diagnostics import ChoiceDiagnostics
from boxsup.config import label_update_settings, resolve_classes
from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.evaluation.evaluate import evaluate
from boxsup.evaluation.figures import confusion_figure, label_evolution_figure
from boxsup.evaluation.metrics import ConfusionMatrix
from boxsup.models import build_model, on_device, parameter_groups
from boxsup.platform.tracking import RunLogger
from boxsup.proposals.pool import split_atoms_by_boxes
from boxsup.proposals.store import ProposalStore
from boxsup.trainers.artifacts import publish
from boxsup.trainers.epoch import pixel_costs, train_one_epoch
from boxsup.trainers.faults import Fault, kill
from boxsup.trainers.weight_average import WeightAverage
from boxsup.trainers.training_set import TrainingSet
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
            "skipped_images": float(sum(self.skipped.values())), "label_update_seconds": self.seconds}


CONFUSIONS = ("chosen", "eo_best", "oracle", "kept")


def summarize_round(ctx, results: list, num_classes: int, started: float) -> tuple[RoundSummary, list[tuple[str, str | None]]]:
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
    ctx, job: dict[str, Any], model: torch.nn.Module | None, round_index: int,
    box_images: list[ImageAnnotation], dataset: VOCDataset, progress: bool, previous_round: int | None = None,
) -> RoundSummary:
    """One round over every box image: this worker's share through the network, all through the pool."""
    started = time.perf_counter()
    cfg, pool = job["config"], job["pool"]
    store = ProposalStore(job["proposal_store"])
    kind = cfg["assign"]["pixel_cost"]
    use_network = model is not None and cfg["assign"]["lam"] != 0
    mine = box_images[ctx.rank :: ctx.world]
    for ann in tqdm(mine, desc=f"labels[round {round_index}]", leave=False, disable=not progress, unit="img"):
        sums = None
        if use_network and ann.boxes:
            try:  # one read, no existence check first: a request saved per image on object stores
                atoms = store.load_atoms(ann.image_id, expected_shape=(ann.height, ann.width))
                atoms = split_atoms_by_boxes(atoms, ann.boxes_array())[0]
            except BoxSupError:
                atoms = None  # a missing or corrupt proposal file: the actor reports the image as skipped
            if atoms is not None:
                costs = pixel_costs(model, dataset.image(ann.image_id), ctx.device, kind)
                sums = atom_mean_costs(costs, atoms, ann.labels_array())
        pool.submit(round_index, ann.image_id, sums, previous_round)
    summary, outcomes = summarize_round(ctx, pool.collect(), dataset.num_classes, started)
    for image_id, why in outcomes:
        if why is not None and ctx.rank == 0:
            log.warning("%s: %s; skipped in round %d", image_id, why, round_index)
    return summary


def distributed_evaluate(ctx, model: torch.nn.Module, dataset: VOCDataset, cfg: dict, progress: bool) -> ConfusionMatrix:
    """Every worker scores its share of the split; the confusion matrices are summed."""
    confusion = evaluate(model, dataset, ctx.device, tuple(cfg["eval"]["scales"]), cfg["eval"]["crf"], progress,
                         ids=dataset.ids[ctx.rank :: ctx.world])
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


def final_artifacts(job, logger: RunLogger, model, confusion: ConfusionMatrix, classes, annotations, dataset, rounds: list[int]) -> None:
    """Rank 0 after the last epoch: per-class IoU, figures, the checkpoint (made locally, into the run dir
    and MLflow), then result.json."""
    run_dir = open_location(job["run_dir"])
    names = ["background", *classes]
    scores = confusion.compute()
    class_iou = {name: float(v) for name, v in zip(names, scores.class_iou)}
    logger.log_metrics({f"val_iou_{n}": v for n, v in class_iou.items() if np.isfinite(v)}, step=job["config"]["train"]["epochs"])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        confusion_figure(confusion.matrix, names, local / "confusion_matrix.png")
        publish(local / "confusion_matrix.png", run_dir, logger, "figures")
        if rounds:
            chosen = sorted({rounds[0], rounds[len(rounds) // 2], rounds[-1]})
            rows = label_evolution_rows(annotations, dataset, LabelStore(job["label_store"]), chosen)
            if rows:
                label_evolution_figure(rows, local / "label_evolution.png")
                publish(local / "label_evolution.png", run_dir, logger, "figures")
        torch.save({"model": model.state_dict(), "config": job["config"], "classes": list(classes)}, local / "checkpoint.pt")
        publish(local / "checkpoint.pt", run_dir, logger, "checkpoint")
    result = {"val_miou": scores.miou, "val_pixel_accuracy": scores.pixel_accuracy, "class_iou": class_iou}
    run_dir.write_bytes("result.json", json.dumps(result, indent=2).encode())


USER_ERROR_FILE = ".user_error"


def train_worker(job: dict[str, Any]) -> None:
    """The per-worker training function (a Ray Train ``train_loop_per_worker``).

    A user's mistake (``BoxSupError``) is recorded in the run directory before it is raised; Ray
    Train then restarts the workers, which find the record and return at once (no retries spent
    on a mistake that would only happen again); the driver reports the recorded line.
    """
    from boxsup.platform.context import RayTrainContext

    ctx = job.get("context") or RayTrainContext()
    if "context" not in job:
        quiet_ray_train_reports()
    run_dir = open_location(job["run_dir"])
    if run_dir.exists(USER_ERROR_FILE):
        return
    try:
        _train(ctx, job)
    except BoxSupError as exc:
        run_dir.write_bytes(USER_ERROR_FILE, str(exc).encode())
        raise


def _train(ctx, job: dict[str, Any]) -> None:
    cfg, t = job["config"], job["config"]["train"]
    progress = ctx.rank == 0 and job.get("progress", True)
    seed = cfg["seed"]
    torch.manual_seed(seed)
    if t["num_threads"]:
        torch.set_num_threads(t["num_threads"])
    classes = resolve_classes(cfg)
    train_data = VOCDataset(cfg["data"]["root"], cfg["data"]["train_split"], classes)
    val_data = VOCDataset(cfg["data"]["root"], cfg["data"]["val_split"], classes)
    annotations = job["annotations"]
    box_images = [a for a in annotations if a.supervision == Supervision.BOX]
    mask_images = [a for a in annotations if a.supervision == Supervision.MASK]

    model = on_device(build_model(cfg["model"]["backbone"], train_data.num_classes, cfg["model"]["weights"]), ctx.device)
    optimizer = torch.optim.SGD(parameter_groups(model, t["lr"]), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t["lr_step"], gamma=t["lr_gamma"])
    start_epoch, label_round_index, labelled = 0, 0, []
    decay = label_update_settings(cfg)["ema"]
    average = WeightAverage(model, decay) if decay > 0 else None
    state = ctx.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        if average is not None and "weight_average" in state:
            average.load_state_dict(state["weight_average"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, label_round_index, labelled = state["epoch"] + 1, state["label_round"], state["labelled"]
        log.info("resuming after epoch %d (labels of round %d)", state["epoch"], label_round_index)
    network = ctx.wrap_model(model)
    scaler = torch.amp.GradScaler("cuda") if t["amp"] and ctx.device.type == "cuda" else None
    logger = RunLogger(job["tracking_uri"], job["mlflow_run_id"]) if ctx.rank == 0 else None
    logged = logger.logged_steps("train_loss") if logger is not None else set()  # by an earlier attempt
    fault: Fault | None = job.get("fault")
    labels = LabelStore(job["label_store"])
    training_set = TrainingSet(train_data, annotations, labels, cfg["data"]["crop_size"], seed)
    rounds = labels.rounds(up_to=label_round_index) if state is not None else []
    confusion = None

    for epoch in range(start_epoch, t["epochs"]):
        seed_epoch(seed, epoch, ctx.rank)
        metrics: dict[str, float | None] = {}
        update = epoch == 0 or (cfg["assign"]["update"] and epoch >= cfg["assign"]["warmup_epochs"])
        if box_images and update:
            scorer = (average.model if average is not None else model) if epoch else None
            summary = label_round(ctx, job, scorer, epoch, box_images, train_data, progress,
                                  previous_round=rounds[-1] if rounds else None)
            label_round_index, labelled = epoch, summary.labelled
            rounds.append(epoch)
            metrics.update(summary.metrics())
            if ctx.rank == 0:
                pseudo = metrics["pseudo_miou"]
                log.info("round %d: %d images labelled, %d skipped, pseudo-label mIoU %s, %.1f s", epoch,
                         len(labelled), sum(summary.skipped.values()), f"{pseudo:.4f}" if pseudo is not None else "-",
                         summary.seconds)
        training_set.label_round = label_round_index
        labelled_ids = set(labelled)
        training_set.annotations = mask_images + [a for a in box_images if a.image_id in labelled_ids]
        training_set.epoch = epoch
        sampler = DistributedSampler(training_set, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        loader = DataLoader(training_set, batch_size=max(1, t["batch_size"] // ctx.world), sampler=sampler,
                            num_workers=t["loader_workers"], pin_memory=ctx.device.type == "cuda")
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        killed = fault is not None and ctx.rank == ctx.world - 1 and fault.fires("kill-worker", epoch)
        batches = kill_after_first_batch(loader) if killed else loader
        loss = train_one_epoch(network, batches, optimizer, ctx.device, progress, scaler)
        ctx.broadcast_buffers(model)
        if average is not None:
            average.update(model)
        scheduler.step()
        loss = float(ctx.all_reduce(np.array([loss]))[0] / ctx.world)
        metrics.update(train_loss=loss, lr=lr, epoch_seconds=time.perf_counter() - started)
        if epoch == t["epochs"] - 1 or (epoch + 1) % cfg["eval"]["every"] == 0:
            confusion = distributed_evaluate(ctx, model, val_data, cfg, progress)
            scores = confusion.compute()
            metrics.update(val_miou=scores.miou, val_pixel_accuracy=scores.pixel_accuracy)
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0:
                save_state(Path(tmp), model, optimizer, scheduler, epoch, label_round_index, labelled, average)
            first = ("val_miou", "train_loss", "pseudo_miou")  # the columns Tune's progress table shows
            ordered = {k: metrics[k] for k in first if k in metrics} | metrics
            ctx.report({k: v for k, v in ordered.items() if v is not None} | {"epoch": epoch},
                       Path(tmp) if ctx.rank == 0 else None)
        if logger is not None and epoch not in logged:  # a re-run epoch has the same values: log them once
            logger.log_metrics(metrics, step=epoch)
            log.info("epoch %d: loss %.4f%s", epoch, loss,
                     f", val mIoU {metrics['val_miou']:.4f}" if "val_miou" in metrics else "")
        if fault is not None and ctx.rank == 0:
            inject_fault(fault, epoch, job.get("driver_pid"))

    if confusion is None:  # restarted after the last epoch's checkpoint: score the model it holds
        confusion = distributed_evaluate(ctx, model, val_data, cfg, progress)
    if ctx.rank == 0:
        final_artifacts(job, logger, model, confusion, classes, annotations, train_data, rounds)


def quiet_ray_train_reports() -> None:
    """Inside Ray: our own INFO lines to the driver, not Ray Train's lines per report and checkpoint."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import ray.train.v2._internal.execution.context as train_context
    import ray.train.v2._internal.execution.storage as train_storage

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    logging.getLogger(train_storage.__name__).setLevel(logging.WARNING)  # "Checkpoint successfully created"


def inject_fault(fault: Fault, epoch: int, driver_pid: int | None) -> None:
    """Rank 0's test hooks after epoch ``epoch`` is checkpointed and logged (see ``boxsup.trainers.faults``)."""
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
