"""Launching one BoxSup run: run directory, MLflow run, proposals, then the loop (Ray Train or local)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from mlflow.tracking import MlflowClient

from boxsup.config import resolve_classes
from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.supervision import apply_supervision, images_with_masks
from boxsup.data.voc import VOCDataset
from boxsup.errors import BoxSupError
from boxsup.proposals.generate import build_store
from boxsup.proposals.store import ProposalStore
from boxsup.platform.assign_pool import AssignmentSpec, LocalAssignmentPool
from boxsup.platform.context import LocalContext
from boxsup.platform.ray_train import fit_with_ray
from boxsup.platform.tracking import RunLogger, end_run, reopen_run, start_run, tracking_uri
from boxsup.trainers.loop import train_worker
from boxsup.utils.storage import Location, canonical, join, open_location

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str | None
    run_dir: Path | str  # a URI when output.dir is one
    val_miou: float
    val_pixel_accuracy: float
    class_iou: dict[str, float]
    pseudo_miou: list[float] = field(default_factory=list)  # per label-update round


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
    return ProposalStore(join(cfg["output"]["dir"], "proposals", name))


def ensure_proposals(cfg: dict[str, Any], dataset: VOCDataset, progress: bool) -> ProposalStore:
    """Build whatever part of the proposal store is missing (first use of a method)."""
    store = proposal_store(cfg, dataset)
    if not set(dataset.ids) <= store.stored_ids():
        log.info("building %s proposals into %s", cfg["proposals"]["method"], store.root)
        build_store(dataset, store, cfg["proposals"]["method"], cfg["proposals"]["max_candidates"], cfg["seed"], progress)
    return store


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config whose paths no longer depend on the working directory (for workers)."""
    out = copy.deepcopy(cfg)
    out["data"]["root"] = str(Path(cfg["data"]["root"]).resolve())
    classes = cfg["data"]["classes"]
    if isinstance(classes, str) and classes != "voc":
        out["data"]["classes"] = list(resolve_classes(cfg))
    uri = out["tracking"]["uri"] = tracking_uri(cfg["tracking"]["uri"])
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        out["tracking"]["uri"] = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    out["output"]["dir"] = canonical(cfg["output"]["dir"])  # a URI stays as it is
    if cfg["proposals"]["store"]:
        out["proposals"]["store"] = canonical(cfg["proposals"]["store"])
    if cfg["data"]["mask_list"]:
        out["data"]["mask_list"] = str(Path(cfg["data"]["mask_list"]).resolve())
    return out


def run_boxsup(
    cfg: dict[str, Any], progress: bool = True, resume: str | Path | None = None,
    tags: dict[str, str] | None = None, report_to_tune: bool = False,
) -> RunResult:
    """Train one BoxSup (or baseline) model as the config says, tracked as one MLflow run.

    ``ray.num_workers`` > 0 runs it through Ray Train with an actor pool for the label update;
    0 runs the same loop in this process. ``resume`` (a run directory) continues an interrupted
    run from its last checkpoint, in the same MLflow run. ``tags`` go on the new MLflow run;
    ``report_to_tune`` (inside a Ray Tune trial) passes every epoch's metrics on to Tune.
    """
    if resume is not None:
        run_dir = canonical(resume)
        run_files = open_location(run_dir)
        record = read_run_record(run_files)
        cfg = record["config"]
        reopen_run(cfg["tracking"]["uri"], record["mlflow_run_id"])
    else:
        cfg = absolute_paths(cfg)
        name = cfg["tracking"]["run_name"] or time.strftime("%Y%m%d-%H%M%S")
        run_dir = join(cfg["output"]["dir"], name)
        run_files = open_location(run_dir)
        if run_files.exists("run.json"):
            raise BoxSupError(f"{run_dir}: a run of this name exists; resume it with --resume {run_dir} or pick tracking.run_name")
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / "config.yaml"
            config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
            run_files.upload(config_file, "config.yaml")  # an unwritable output.dir stops here, before MLflow
            run_id = start_run(cfg["tracking"]["uri"], cfg["tracking"]["experiment"], name, cfg, tags)
            RunLogger(cfg["tracking"]["uri"], run_id).log_artifact(config_file)
        record = {"mlflow_run_id": run_id, "name": name, "config": cfg}
        run_files.write_bytes("run.json", json.dumps(record, indent=2).encode())

    classes = resolve_classes(cfg)
    train_data = VOCDataset(cfg["data"]["root"], cfg["data"]["train_split"], classes)
    annotations = load_training_annotations(cfg, train_data)
    box_images = any(a.supervision == Supervision.BOX for a in annotations)
    store = ensure_proposals(cfg, train_data, progress) if box_images else proposal_store(cfg, train_data)
    spec = AssignmentSpec(cfg["data"]["root"], cfg["data"]["train_split"], classes, str(store.root),
                          join(run_dir, "labels"), cfg["assign"]["lam"], cfg["assign"]["k"], cfg["seed"],
                          cfg["assign"]["cache_images"])
    fail_after = os.environ.get("BOXSUP_FAIL_AFTER_EPOCH")
    job = {"config": cfg, "annotations": annotations, "run_dir": str(run_dir), "label_store": spec.label_store,
           "proposal_store": spec.proposal_store, "tracking_uri": cfg["tracking"]["uri"],
           "mlflow_run_id": record["mlflow_run_id"], "progress": progress,
           "fail_after_epoch": int(fail_after) if fail_after else None}
    ok = False
    try:
        if cfg["ray"]["num_workers"] == 0:
            context = LocalContext(run_dir, select_device(cfg["train"]["device"]), report_to_tune)
            job.update(pool=LocalAssignmentPool(spec), context=context)
            train_worker(job)
        else:
            fit_with_ray(job, spec, record["name"], run_dir, report_to_tune)
        ok = True
    finally:
        end_run(cfg["tracking"]["uri"], record["mlflow_run_id"], ok)
    result = json.loads(run_files.read_bytes("result.json"))
    pseudo = [m.value for m in sorted(MlflowClient(tracking_uri(cfg["tracking"]["uri"])).get_metric_history(record["mlflow_run_id"], "pseudo_miou"), key=lambda m: m.step)]
    return RunResult(record["mlflow_run_id"], run_files.root, result["val_miou"], result["val_pixel_accuracy"], result["class_iou"], pseudo)


def read_run_record(location: Location) -> dict[str, Any]:
    """The run's ``run.json`` (MLflow run id, name, config) in the run directory ``location``."""
    try:
        return json.loads(location.read_bytes("run.json"))
    except FileNotFoundError:
        raise BoxSupError(f"{location.path('run.json')}: not a run directory (no run.json); "
                          "give the directory `boxsup train` printed") from None
