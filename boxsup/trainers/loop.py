"""The BoxSup training loop of one worker (Sec. 4.3): label-update round, epoch, evaluation, repeated.

Ray Train runs ``train_worker`` on every worker (``RayTrainContext``); without Ray it runs once
in-process (``LocalContext``). Round r's labels use the network after epoch r-1 (round 0: E_o
alone), then epoch r trains on them. Each worker runs the network over its share of the box images
and sends per-atom mean costs to the assignment pool, which writes the label maps; the training
images are sharded by a ``DistributedSampler``; validation is sharded and its confusion matrix
summed. Rank 0 alone logs to MLflow and writes checkpoints.
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
from boxsup.config import resolve_classes
from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.evaluation.evaluate import evaluate
from boxsup.evaluation.figures import confusion_figure, label_evolution_figure
from boxsup.evaluation.metrics import ConfusionMatrix
from boxsup.models import build_model, parameter_groups
from boxsup.platform.tracking import RunLogger
from boxsup.proposals.pool import split_atoms_by_boxes
from boxsup.proposals.store import ProposalStore
from boxsup.trainers.artifacts import publish
from boxsup.trainers.epoch import pixel_costs, train_one_epoch
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
    confusion: np.ndarray
    seconds: float

    def metrics(self) -> dict[str, float | None]:
        confusion = ConfusionMatrix(len(self.confusion))
        confusion.matrix = self.confusion.astype(np.int64)
        pseudo = confusion.compute().miou if self.confusion.sum() else None
        return {"pseudo_miou": pseudo, "mean_chosen_cost": self.chosen_cost_sum / max(self.boxes, 1),
                "skipped_images": float(sum(self.skipped.values())), "label_update_seconds": self.seconds}


def label_round(
    ctx, job: dict[str, Any], model: torch.nn.Module | None, round_index: int,
    box_images: list[ImageAnnotation], dataset: VOCDataset, progress: bool,
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
                atoms = split_atoms_by_boxes(store.load_atoms(ann.image_id), ann.boxes_array())[0]
            except BoxSupError:
                atoms = None  # a missing or corrupt proposal file: the actor reports the image as skipped
            if atoms is not None:
                costs = pixel_costs(model, dataset.image(ann.image_id), ctx.device, kind)
                sums = atom_mean_costs(costs, atoms, ann.labels_array())
        pool.submit(round_index, ann.image_id, sums)
    results = pool.collect()
    n = dataset.num_classes
    confusion = np.zeros(n * n)
    for r in results:
        for index, count in r.confusion.items():
            confusion[index] += count
    totals = ctx.all_reduce(np.array([sum(r.boxes for r in results), sum(r.chosen_cost_sum for r in results)]))
    confusion = ctx.all_reduce(confusion).reshape(n, n)
    outcomes = [item for part in ctx.all_gather([(r.image_id, r.skipped) for r in results]) for item in part]
    labelled = sorted(i for i, why in outcomes if why is None)
    skipped = Counter(why for _, why in outcomes if why is not None)
    for image_id, why in outcomes:
        if why is not None and ctx.rank == 0:
            log.warning("%s: %s; skipped in round %d", image_id, why, round_index)
    return RoundSummary(labelled, skipped, int(totals[0]), float(totals[1]), confusion, time.perf_counter() - started)


def distributed_evaluate(ctx, model: torch.nn.Module, dataset: VOCDataset, cfg: dict, progress: bool) -> ConfusionMatrix:
    """Every worker scores its share of the split; the confusion matrices are summed."""
    confusion = evaluate(model, dataset, ctx.device, tuple(cfg["eval"]["scales"]), cfg["eval"]["crf"], progress,
                         ids=dataset.ids[ctx.rank :: ctx.world])
    confusion.matrix = ctx.all_reduce(confusion.matrix).astype(np.int64)
    return confusion


def save_state(directory: Path, model, optimizer, scheduler, epoch: int, label_round: int, labelled: list[str]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "label_round": label_round, "labelled": labelled, "torch_rng": torch.get_rng_state()}
    torch.save(state, directory / "state.pt")


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


def train_worker(job: dict[str, Any]) -> None:
    """The per-worker training function (a Ray Train ``train_loop_per_worker``)."""
    from boxsup.platform.context import RayTrainContext

    ctx = job.get("context") or RayTrainContext()
    if "context" not in job:
        quiet_ray_train_reports()
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

    model = build_model(cfg["model"]["backbone"], train_data.num_classes, cfg["model"]["weights"]).to(ctx.device)
    optimizer = torch.optim.SGD(parameter_groups(model, t["lr"]), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t["lr_step"], gamma=t["lr_gamma"])
    start_epoch, label_round_index, labelled = 0, 0, []
    state = ctx.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, label_round_index, labelled = state["epoch"] + 1, state["label_round"], state["labelled"]
        log.info("resuming after epoch %d (labels of round %d)", state["epoch"], label_round_index)
    network = ctx.wrap_model(model)
    scaler = torch.amp.GradScaler("cuda") if t["amp"] and ctx.device.type == "cuda" else None
    logger = RunLogger(job["tracking_uri"], job["mlflow_run_id"]) if ctx.rank == 0 else None
    labels = LabelStore(job["label_store"])
    training_set = TrainingSet(train_data, annotations, labels, cfg["data"]["crop_size"], seed)
    rounds = labels.rounds(up_to=label_round_index) if state is not None else []
    confusion = None

    for epoch in range(start_epoch, t["epochs"]):
        metrics: dict[str, float | None] = {}
        update = epoch == 0 or (cfg["assign"]["update"] and epoch >= cfg["assign"]["warmup_epochs"])
        if box_images and update:
            summary = label_round(ctx, job, model if epoch else None, epoch, box_images, train_data, progress)
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
        loss = train_one_epoch(network, loader, optimizer, ctx.device, progress, scaler)
        scheduler.step()
        loss = float(ctx.all_reduce(np.array([loss]))[0] / ctx.world)
        metrics.update(train_loss=loss, lr=lr, epoch_seconds=time.perf_counter() - started)
        if epoch == t["epochs"] - 1 or (epoch + 1) % cfg["eval"]["every"] == 0:
            confusion = distributed_evaluate(ctx, model, val_data, cfg, progress)
            scores = confusion.compute()
            metrics.update(val_miou=scores.miou, val_pixel_accuracy=scores.pixel_accuracy)
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0:
                save_state(Path(tmp), model, optimizer, scheduler, epoch, label_round_index, labelled)
            first = ("val_miou", "train_loss", "pseudo_miou")  # the columns Tune's progress table shows
            ordered = {k: metrics[k] for k in first if k in metrics} | metrics
            ctx.report({k: v for k, v in ordered.items() if v is not None} | {"epoch": epoch},
                       Path(tmp) if ctx.rank == 0 else None)
        if logger is not None:  # after the checkpoint: a restarted epoch never logs twice
            logger.log_metrics(metrics, step=epoch)
            log.info("epoch %d: loss %.4f%s", epoch, loss,
                     f", val mIoU {metrics['val_miou']:.4f}" if "val_miou" in metrics else "")
        inject_failure(job, epoch, ctx.rank)

    if ctx.rank == 0 and confusion is not None:
        final_artifacts(job, logger, model, confusion, classes, annotations, train_data, rounds)


def quiet_ray_train_reports() -> None:
    """Inside Ray: our own INFO lines to the driver, not Ray Train's lines per report and checkpoint."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import ray.train.v2._internal.execution.context as train_context
    import ray.train.v2._internal.execution.storage as train_storage

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    logging.getLogger(train_storage.__name__).setLevel(logging.WARNING)  # "Checkpoint successfully created"


def inject_failure(job: dict[str, Any], epoch: int, rank: int) -> None:
    """Test hook: fail once after ``job['fail_after_epoch']`` (from BOXSUP_FAIL_AFTER_EPOCH)."""
    if job.get("fail_after_epoch") != epoch or rank != 0:
        return
    run_dir, marker = open_location(job["run_dir"]), f".failed-after-epoch-{epoch}"
    if run_dir.exists(marker):
        return
    run_dir.write_bytes(marker, b"")
    raise RuntimeError(f"injected failure after epoch {epoch} (BOXSUP_FAIL_AFTER_EPOCH)")
