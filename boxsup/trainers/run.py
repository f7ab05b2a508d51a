"""A whole BoxSup run on one machine: label update, epoch, evaluation, repeated (Sec. 4.3).

Round r's label update uses the network after epoch r-1 (round 0: E_o alone), then epoch r trains
on those labels. ``label_round`` and ``train_epoch`` stay separate so a distributed loop can call
them in its own way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from boxsup.config import resolve_classes
from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.supervision import apply_supervision, images_with_masks
from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.evaluation.figures import confusion_figure, label_evolution_figure
from boxsup.models import build_model, parameter_groups
from boxsup.platform.tracking import Tracker
from boxsup.proposals.generate import build_store
from boxsup.proposals.store import ProposalStore
from boxsup.evaluation.evaluate import evaluate
from boxsup.trainers.epoch import train_one_epoch
from boxsup.trainers.label_update import BoxedPoolCache, RoundStats, update_labels
from boxsup.trainers.training_set import TrainingSet
from boxsup.utils.files import atomic_path, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str | None
    run_dir: Path
    val_miou: float
    val_pixel_accuracy: float
    class_iou: dict[str, float]
    pseudo_miou: list[float] = field(default_factory=list)  # per label-update round
    label_update_seconds: float = 0.0
    train_seconds: float = 0.0


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BoxSupError("config key train.device: cuda requested but no GPU is available")
    return torch.device(name)


def load_training_annotations(cfg: dict[str, Any], dataset: VOCDataset) -> list[ImageAnnotation]:
    """Annotations of the training split with each image's supervision kind set."""
    annotations = [dataset.annotation(i) for i in dataset.ids]
    d = cfg["data"]
    masked = images_with_masks(dataset.ids, d["supervision"], cfg["seed"], d["mask_fraction"], d["mask_list"])
    missing = apply_supervision(annotations, masked)
    if missing:
        log.warning("%d images have no mask in SegmentationClass/ and fall back to their boxes, e.g. %s",
                    len(missing), missing[0])
    return annotations


def proposal_store(cfg: dict[str, Any], dataset: VOCDataset) -> ProposalStore:
    """The configured store, or one per (dataset, split, method) under ``output.dir``."""
    if cfg["proposals"]["store"]:
        return ProposalStore(cfg["proposals"]["store"])
    key = hashlib.sha1(str(dataset.root.resolve()).encode()).hexdigest()[:8]
    name = f"{dataset.root.resolve().name}-{key}-{dataset.split}-{cfg['proposals']['method']}"
    return ProposalStore(Path(cfg["output"]["dir"]) / "proposals" / name)


def ensure_proposals(cfg: dict[str, Any], dataset: VOCDataset, progress: bool) -> ProposalStore:
    """Build whatever part of the proposal store is missing (first use of a method)."""
    store = proposal_store(cfg, dataset)
    if not all(store.has(i) for i in dataset.ids):
        log.info("building %s proposals into %s", cfg["proposals"]["method"], store.root)
        build_store(dataset, store, cfg["proposals"]["method"], cfg["proposals"]["max_candidates"], cfg["seed"], progress)
    return store


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, epoch: int, cfg: dict, classes) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "config": cfg,
        "classes": list(classes),
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def label_evolution_rows(annotations, dataset, labels: LabelStore, rounds: list[int], n_images: int = 4):
    """Rows for the label-evolution figure: a few box-supervised images across rounds."""
    picked = [a for a in annotations if a.supervision == Supervision.BOX and labels.has(rounds[0], a.image_id)]
    rows = []
    for ann in picked[:n_images]:
        maps = [(f"round {r}", labels.read(r, ann.image_id)) for r in rounds if labels.has(r, ann.image_id)]
        rows.append((ann.image_id, dataset.image(ann.image_id), dataset.mask(ann.image_id), maps))
    return rows


def run_boxsup(cfg: dict[str, Any], progress: bool = True) -> RunResult:
    """Train one BoxSup (or baseline) model as the config says, tracked as one MLflow run."""
    seed = cfg["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed)
    if cfg["train"]["num_threads"]:
        torch.set_num_threads(cfg["train"]["num_threads"])
    device = select_device(cfg["train"]["device"])
    classes = resolve_classes(cfg)
    train_data = VOCDataset(cfg["data"]["root"], cfg["data"]["train_split"], classes)
    val_data = VOCDataset(cfg["data"]["root"], cfg["data"]["val_split"], classes)
    annotations = load_training_annotations(cfg, train_data)
    box_images = [a for a in annotations if a.supervision == Supervision.BOX]
    pools = BoxedPoolCache(ensure_proposals(cfg, train_data, progress)) if box_images else None
    model = build_model(cfg["model"]["backbone"], train_data.num_classes, cfg["model"]["weights"]).to(device)
    t = cfg["train"]
    optimizer = torch.optim.SGD(parameter_groups(model, t["lr"]), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t["lr_step"], gamma=t["lr_gamma"])

    name = cfg["tracking"]["run_name"] or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg["output"]["dir"]) / name
    labels = LabelStore(run_dir / "labels")
    training_set = TrainingSet(train_data, annotations, labels, cfg["data"]["crop_size"], seed)
    generator = torch.Generator().manual_seed(seed)
    mask_images = [a for a in annotations if a.supervision == Supervision.MASK]
    result = RunResult(None, run_dir, 0.0, 0.0, {})
    rounds_done: list[int] = []

    with Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"], name) as tracker:
        result.run_id = tracker.run_id
        tracker.log_config(cfg)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        tracker.log_artifact(run_dir / "config.yaml")
        stats: RoundStats | None = None
        for epoch in range(t["epochs"]):
            warm = epoch >= cfg["assign"]["warmup_epochs"]
            if box_images and (epoch == 0 or (cfg["assign"]["update"] and warm)):
                started = time.perf_counter()
                stats = update_labels(epoch, annotations, train_data, pools, labels, model if epoch else None,
                                      cfg["assign"]["lam"], cfg["assign"]["k"], seed, device,
                                      cfg["assign"]["pixel_cost"], progress)
                seconds = time.perf_counter() - started
                result.label_update_seconds += seconds
                rounds_done.append(epoch)
                if stats.pseudo_miou is not None:
                    result.pseudo_miou.append(stats.pseudo_miou)
                tracker.log_metrics({"pseudo_miou": stats.pseudo_miou, "mean_chosen_cost": stats.mean_chosen_cost,
                                     "skipped_images": sum(stats.skipped.values()), "label_update_seconds": seconds}, step=epoch)
                training_set.label_round = epoch
            labelled = set(stats.labelled) if stats else set()
            epoch_images = mask_images + [a for a in box_images if a.image_id in labelled]
            training_set.annotations = epoch_images
            training_set.epoch = epoch
            loader = DataLoader(training_set, batch_size=t["batch_size"], shuffle=True, drop_last=len(epoch_images) > t["batch_size"],
                                num_workers=t["loader_workers"], generator=generator)
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss = train_one_epoch(model, loader, optimizer, device, progress)
            scheduler.step()
            seconds = time.perf_counter() - started
            result.train_seconds += seconds
            metrics = {"train_loss": loss, "lr": lr, "epoch_seconds": seconds}
            last = epoch == t["epochs"] - 1
            if last or (epoch + 1) % cfg["eval"]["every"] == 0:
                confusion = evaluate(model, val_data, device, tuple(cfg["eval"]["scales"]), cfg["eval"]["crf"], progress)
                scores = confusion.compute()
                metrics.update(val_miou=scores.miou, val_pixel_accuracy=scores.pixel_accuracy)
            tracker.log_metrics(metrics, step=epoch)
            save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, scheduler, epoch, cfg, classes)
            log.info("epoch %d: loss %.4f%s", epoch, loss, f", val mIoU {metrics['val_miou']:.4f}" if "val_miou" in metrics else "")

        names = ["background", *classes]
        result.val_miou, result.val_pixel_accuracy = scores.miou, scores.pixel_accuracy
        result.class_iou = {n: float(v) for n, v in zip(names, scores.class_iou)}
        tracker.log_metrics({f"val_iou_{n}": v for n, v in result.class_iou.items() if np.isfinite(v)}, step=t["epochs"])
        confusion_figure(confusion.matrix, names, run_dir / "confusion_matrix.png")
        tracker.log_artifact(run_dir / "confusion_matrix.png", "figures")
        if rounds_done:
            chosen = sorted({rounds_done[0], rounds_done[len(rounds_done) // 2], rounds_done[-1]})
            rows = label_evolution_rows(annotations, train_data, labels, chosen)
            if rows:
                label_evolution_figure(rows, run_dir / "label_evolution.png")
                tracker.log_artifact(run_dir / "label_evolution.png", "figures")
        tracker.log_artifact(run_dir / "checkpoint.pt", "checkpoint")
    return result
