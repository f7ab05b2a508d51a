"""Launching one BoxSup run: run directory, MLflow run, proposals, then the loop (Ray Train or local)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from mlflow.tracking import MlflowClient

from boxsup.assign.assigner import AssignmentSpec
from boxsup.assign.rule import LabelUpdateRule
from boxsup.config import flatten, parse_override, set_key
from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.dataset import SegmentationDataset, UnionDataset, skip_summary
from boxsup.data.sources import build_datasets, resolve_classes, training_annotations
from boxsup.errors import BoxSupError
from boxsup.models import check_model_settings, model_from_config
from boxsup.models.kernels import check_deterministic_backbone
from boxsup.platform.assign_pool import LocalAssignmentPool
from boxsup.platform.context import LocalContext
from boxsup.platform.guard import driver_guard
from boxsup.platform.proposal_tasks import build_store_on_ray
from boxsup.platform.ray_train import fit_with_ray, init_ray
from boxsup.platform.tracking import RunLogger, check_tracking_store, end_run, reopen_run, start_run, tracking_uri
from boxsup.proposals.generate import MAX_SIDE, BuildReport, build_store, store_meta
from boxsup.proposals.store import ORIGIN_KEYS, ProposalStore
from boxsup.serving.mlflow_model import log_run_model
from boxsup.trainers.job import TrainingJob
from boxsup.trainers.loop import USER_ERROR_FILE, train_worker
from boxsup.utils.faults import fault_from_env
from boxsup.utils.storage import Location, canonical, check_output_location, join, open_location

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str | None
    run_dir: Path | str  # a URI when output.dir is one
    val_miou: float
    val_pixel_accuracy: float
    class_iou: dict[str, float]
    pseudo_miou: list[float] = field(default_factory=list)  # per label-update round
    nothing_to_resume: bool = False  # --resume of a run that had finished: nothing was changed
    annotation_problems: str = "none"  # images and boxes the training set left out, counted per reason


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BoxSupError("config key train.device: cuda requested but no GPU is available")
    return torch.device(name)


def proposal_store(cfg: dict[str, Any], dataset: SegmentationDataset) -> ProposalStore:
    """The configured store, or by default ``<output.dir>/proposals/<data>-<hash>-<split>-<method>-<max_candidates>``:
    one per training data and proposal settings (the hash covers every setting a store is checked
    for), so a run with another cap or ``max_side`` gets a store of its own instead of a refusal."""
    if cfg["proposals"]["store"]:
        return ProposalStore(cfg["proposals"]["store"])
    meta = run_store_meta(cfg, dataset)
    key = hashlib.sha1(json.dumps({k: meta.get(k) for k in ORIGIN_KEYS}, sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(meta["data_root"].split(" + ")[0]).name
    split = meta["split"] if " + " not in meta["split"] else f"{len(meta['split'].split(' + '))}sources"
    name = f"{stem}-{key}-{split}-{meta['method']}-{meta['max_candidates']}"
    return ProposalStore(join(cfg["output"]["dir"], "proposals", name))


def run_store_meta(cfg: dict[str, Any], dataset: SegmentationDataset) -> dict[str, Any]:
    """The meta.json the run's proposal store must hold (``store_meta`` of the config's settings)."""
    p = cfg["proposals"]
    return store_meta(dataset, p["method"], p["max_candidates"], cfg["seed"], p.get("max_side", MAX_SIDE))


def checked_proposal_store(cfg: dict[str, Any], dataset: SegmentationDataset) -> ProposalStore:
    """The run's proposal store, refused unless made (or empty, to be made) for this method, data and settings."""
    store = proposal_store(cfg, dataset)
    store.check_origin(run_store_meta(cfg, dataset))
    return store


def ensure_proposals(cfg: dict[str, Any], dataset: SegmentationDataset, progress: bool, ids: list[str] | None = None) -> ProposalStore:
    """The run's checked proposal store, completed for ``ids`` (default: the whole split) if needed."""
    return complete_store(checked_proposal_store(cfg, dataset), cfg, dataset, progress, ids)  # a complete store too


IMPORTED_METHODS = ("mcg",)  # proposals imported from published files, never computed here


def complete_store(store: ProposalStore, cfg: dict[str, Any], dataset: SegmentationDataset, progress: bool,
                   ids: list[str] | None = None) -> ProposalStore:
    """Build the pools of ``ids`` (default: the whole split) that the already checked ``store`` lacks.

    A run on Ray (``ray.num_workers`` > 0) builds them as Ray tasks over the cluster's CPUs, an
    in-process run in this process; the files are the same. ``cfg``'s paths must be absolute. An
    image the build cannot read (a JPEG whose data is cut off) is logged once with its path and
    why, and gets no pool: it sits out every label update and so every epoch, counted in each
    round's ``skipped_images``. A store that lacks nothing is used as it is (see ``ProposalStore``).
    """
    wanted = dataset.ids if ids is None else ids
    lacking = set(wanted) - store.stored_ids()
    if lacking:
        method = cfg["proposals"]["method"]
        if method in IMPORTED_METHODS:
            if len(lacking) == len(set(wanted)):
                raise BoxSupError(f"{store.root}: holds no {method} pool for any training image; import them first: "
                                  f"boxsup proposals import --format {method} --mat-dir DIR --config FILE --out {store.root}")
            log.warning("%s: %d of %d box images have no imported %s pool (e.g. %s); they sit out every label "
                        "update (counted as skipped)", store.root, len(lacking), len(set(wanted)), method, min(lacking))
            return store
        log.info("building %s proposals into %s", method, store.root)
        settings = (method, cfg["proposals"]["max_candidates"], cfg["seed"])
        max_side = cfg["proposals"].get("max_side", MAX_SIDE)
        report: BuildReport
        if cfg["ray"]["num_workers"] > 0:  # a run on Ray: tasks over every CPU of the cluster
            init_ray(cfg)
            report = build_store_on_ray(dataset, cfg["data"], store, *settings, progress, ids=wanted, max_side=max_side)
            log.info("proposals: %s", report.throughput_line())
        else:
            report = build_store(dataset, store, *settings, progress, ids=wanted, max_side=max_side)
        if report.skipped:
            log.warning("%s: %s of %d box images (see the lines above); they sit out every label update, counted "
                        "in skipped_images", store.root, skip_summary(report.skipped), len(set(wanted)))
    return store


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config whose paths no longer depend on the working directory (for workers)."""
    out = copy.deepcopy(cfg)
    if cfg["data"]["root"] is not None:
        out["data"]["root"] = str(Path(cfg["data"]["root"]).resolve())
    for source in [*(out["data"]["sources"] or []), *([out["data"]["val"]] if out["data"]["val"] else [])]:
        source["root"] = str(Path(source["root"]).resolve())  # their other paths are relative to it
    classes = cfg["data"]["classes"]
    if isinstance(classes, str) and classes != "voc":
        out["data"]["classes"] = list(resolve_classes(cfg))
    uri = out["tracking"]["uri"] = tracking_uri(cfg["tracking"]["uri"])
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        out["tracking"]["uri"] = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    out["output"]["dir"] = canonical(cfg["output"]["dir"])  # a URI stays as it is
    if cfg["proposals"]["store"]:
        out["proposals"]["store"] = canonical(cfg["proposals"]["store"])
    for key in ("mask_list", "audit_list"):
        if cfg["data"][key]:
            out["data"][key] = str(Path(cfg["data"][key]).resolve())
    if cfg["model"]["weights"] not in NAMED_WEIGHTS:
        out["model"]["weights"] = str(Path(cfg["model"]["weights"]).resolve())
    return out


NAMED_WEIGHTS = ("none", "imagenet")  # model.weights values that are not a file


def run_boxsup(
    cfg: dict[str, Any], progress: bool = True, resume: str | Path | None = None,
    tags: dict[str, str] | None = None, report_to_tune: bool = False, changes: list[str] | None = None,
) -> RunResult:
    """Train one BoxSup (or baseline) model as the config says, tracked as one MLflow run.

    ``ray.num_workers`` > 0 runs it through Ray Train with an actor pool for the label update;
    0 runs the same loop in this process. ``resume`` (a run directory) continues an interrupted
    run from its last checkpoint, in the same MLflow run; ``changes`` (``KEY=VALUE`` texts) may
    change the keys of ``RESUMABLE_KEYS`` for it. A finished run is left as it is (its result comes
    back with ``nothing_to_resume``) unless ``changes`` raise ``train.epochs``. ``tags`` go on the
    new MLflow run; ``report_to_tune`` (inside a Ray Tune trial) passes every epoch's metrics on to Tune.

    The tracking store, the output directory, the model weights and the training data are checked
    before anything is written. The run directory is claimed atomically, so two runs of one name
    cannot share it. A run that fails ends FAILED with its error as the tag ``boxsup.error``; one
    that failed before its first epoch also gives its run directory (and so its name) back.
    """
    if resume is not None:
        pairs = resume_overrides(changes or [])
        run_dir = canonical(resume)
        run_files = open_location(run_dir)
        record = read_run_record(run_files)
        check_tracking_store(record["config"]["tracking"]["uri"])
        cfg, changed = resumed_config(record, pairs)
        if run_has_finished(record, run_files, changed):
            return run_result(cfg, record["mlflow_run_id"], run_files, nothing_to_resume=True)
    else:
        cfg = absolute_paths(cfg)
        check_tracking_store(cfg["tracking"]["uri"])
        check_output_location(cfg["output"]["dir"], "output.dir")
        name = cfg["tracking"]["run_name"] or time.strftime("%Y%m%d-%H%M%S")
        run_dir = join(cfg["output"]["dir"], name)
        run_files = open_location(run_dir)
        refuse_taken(run_files, run_dir)  # early, before the data is read; claimed for good below
    classes = resolve_classes(cfg)
    LabelUpdateRule.from_config(cfg)  # a combination the label update cannot use stops here
    check_model_settings(cfg["model"]["backbone"], cfg["model"]["weights"], cfg["model"].get("output_stride"))
    if cfg["train"].get("deterministic"):
        check_deterministic_backbone(cfg["model"]["backbone"])
    check_weights_file(cfg["model"], classes)
    train_data, val_data = build_datasets(cfg, classes)
    annotations = training_annotations(cfg, train_data)
    problems = skip_summary(train_data.skip_counts.counts)
    val_data.load_annotations(skip_bad=False)  # a score must count every validation image: no skips
    store = checked_proposal_store(cfg, train_data)
    if resume is not None:
        reopen_run(cfg["tracking"]["uri"], record["mlflow_run_id"])
        record = record_resume_changes(run_files, record, cfg, changed)
        run_files.remove(USER_ERROR_FILE)  # the mistake was fixed, or it is found again
    else:
        claim_run_dir(run_files, run_dir)
        record = start_tracked_run(cfg, name, run_files, tags)
    run_id = record["mlflow_run_id"]
    MlflowClient(tracking_uri(cfg["tracking"]["uri"])).set_tag(run_id, PROBLEMS_TAG, problems[:5000])
    guard = driver_guard()
    guard.open_run(tracking_uri(cfg["tracking"]["uri"]), run_id)
    ok, error = False, None
    try:
        train(cfg, train_data, annotations, store, record, run_dir, progress, report_to_tune)
        log_final_model(cfg, run_id, run_files)
        ok = True
    except BoxSupError as exc:
        error = str(exc)
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        end_run(cfg["tracking"]["uri"], run_id, ok, error)
        guard.close_run(run_id)
        if not ok and resume is None:
            release_untrained_run(cfg, run_id, run_files)
    return replace(run_result(cfg, run_id, run_files), annotation_problems=problems)


PROBLEMS_TAG = "boxsup.annotation_problems"  # what the training set left out, counted per reason


def run_result(cfg: dict[str, Any], run_id: str, run_files: Location, nothing_to_resume: bool = False) -> RunResult:
    """A trained run's scores, from its ``result.json`` and MLflow's per-round pseudo-label mIoU."""
    result = json.loads(run_files.read_bytes("result.json"))
    history = MlflowClient(tracking_uri(cfg["tracking"]["uri"])).get_metric_history(run_id, "pseudo_miou")
    pseudo = [m.value for m in sorted(history, key=lambda m: m.step)]
    return RunResult(run_id, run_files.root, result["val_miou"], result["val_pixel_accuracy"], result["class_iou"],
                     pseudo, nothing_to_resume)


def check_weights_file(model_cfg: dict[str, Any], classes: tuple[str, ...]) -> None:
    """A ``model.weights`` file that does not fit the backbone, refused in one line before any run starts:
    it is loaded (weights-only) into the model the workers will build."""
    if model_cfg["weights"] not in NAMED_WEIGHTS:
        model_from_config(model_cfg, len(classes) + 1)


CLAIM_FILE = "claim.json"  # created atomically by the run that takes the directory


def refuse_taken(run_files: Location, run_dir: str) -> None:
    """One line when ``run_dir`` belongs to a run (or a starting one) or holds other files."""
    if run_files.exists("run.json"):
        raise BoxSupError(f"{run_dir}: a run of this name exists; resume it with --resume {run_dir} "
                          "or pick another tracking.run_name")
    if run_files.exists(CLAIM_FILE):
        raise BoxSupError(f"{run_dir}: a run of this name is starting ({CLAIM_FILE}); pick another tracking.run_name "
                          f"(if that run died before writing run.json, delete {run_dir})")
    if run_files.list():
        raise BoxSupError(f"{run_dir}: holds files of no run; pick another tracking.run_name")


def claim_run_dir(run_files: Location, run_dir: str) -> None:
    """Take ``run_dir`` for this run by creating its ``claim.json`` atomically: of two runs of one
    name started together, exactly one gets it; the other is refused in one line and writes nothing.

    Atomic on local (and NFS) paths and on S3; docs/storage.md names the stores where it is not.
    """
    refuse_taken(run_files, run_dir)
    claim = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not run_files.create(CLAIM_FILE, json.dumps(claim).encode()):
        raise BoxSupError(f"{run_dir}: a run of this name is starting (it took {CLAIM_FILE} first); "
                          "pick another tracking.run_name")


RESUMABLE_KEYS = ("train.lr", "train.epochs")  # what --set may change when a run is resumed
RESUMED_WITH_TAG = "boxsup.resumed_with"  # the changes of every resume that made some, "; "-separated


def resume_overrides(texts: list[str]) -> list[tuple[str, Any, str]]:
    """The ``--set`` pairs of a resume as (key, value, text); a key outside ``RESUMABLE_KEYS`` is one line."""
    pairs = []
    for text in texts:
        key, value = parse_override(text)
        if key not in RESUMABLE_KEYS:
            raise BoxSupError(f"--set {text}: {key} cannot change when a run is resumed (only "
                              f"{' and '.join(RESUMABLE_KEYS)} can); start a new run to change it")
        pairs.append((key, value, text))
    return pairs


def resumed_config(record: dict[str, Any], pairs: list[tuple[str, Any, str]]) -> tuple[dict[str, Any], list[str]]:
    """The run's config with the resume's changes, each checked as any config value is; returns it and
    the changes that differ from the run's own values (``KEY=VALUE``). ``train.epochs`` may not go below
    the epochs the run has done."""
    cfg = copy.deepcopy(record["config"])
    for key, value, text in pairs:
        set_key(cfg, key, value, f"--set {text}")
    before, after = flatten(record["config"]), flatten(cfg)
    changed = [f"{key}={after[key]}" for key in dict.fromkeys(key for key, _, _ in pairs) if after[key] != before[key]]
    epochs = cfg["train"]["epochs"]
    if epochs < before["train.epochs"]:
        done = len(RunLogger(cfg["tracking"]["uri"], record["mlflow_run_id"]).logged_steps("train_loss"))
        if epochs < done:
            raise BoxSupError(f"--set train.epochs={epochs}: the run has done {done} epochs already; "
                              f"train.epochs can be {done} or more")
    return cfg, changed


def run_has_finished(record: dict[str, Any], run_files: Location, changed: list[str]) -> bool:
    """Whether a resume finds its run finished with nothing left to do (True), or work to do (False).

    Finished: FINISHED in MLflow with its ``result.json``. Raising ``train.epochs`` gives it more to
    do; any other change of a finished run is refused in one line, as it would change nothing.
    """
    cfg = record["config"]
    status = MlflowClient(tracking_uri(cfg["tracking"]["uri"])).get_run(record["mlflow_run_id"]).info.status
    if status != "FINISHED" or not run_files.exists("result.json"):
        return False
    if any(text.startswith("train.epochs=") for text in changed):
        return False
    if changed:
        raise BoxSupError(f"{run_files.root}: the run finished; {', '.join(changed)} would change nothing "
                          "(raise train.epochs to train on)")
    return True


def record_resume_changes(run_files: Location, record: dict[str, Any], cfg: dict[str, Any],
                          changed: list[str]) -> dict[str, Any]:
    """The run record with the resume's config: ``run.json`` rewritten (atomically) and the changes added
    to the MLflow tag ``boxsup.resumed_with`` (params cannot change); unchanged when ``changed`` is empty."""
    if not changed:
        return record
    record = {**record, "config": cfg}
    run_files.write_bytes("run.json", json.dumps(record, indent=2).encode())
    client = MlflowClient(tracking_uri(cfg["tracking"]["uri"]))
    earlier = client.get_run(record["mlflow_run_id"]).data.tags.get(RESUMED_WITH_TAG)
    history = "; ".join(filter(None, [earlier, ", ".join(changed)]))
    client.set_tag(record["mlflow_run_id"], RESUMED_WITH_TAG, history[-5000:])
    log.info("run %s resumed with %s (recorded in run.json and the tag %s)", record["name"], ", ".join(changed),
             RESUMED_WITH_TAG)
    return record


MODEL_ERROR_TAG = "boxsup.model_error"


def log_final_model(cfg: dict[str, Any], run_id: str, run_files: Location) -> None:
    """The run's final ``checkpoint.pt`` logged once, from the driver, as its MLflow model ``runs:/<id>/model``.

    The training has succeeded by now: when the model cannot be logged (the tracking store refuses
    the upload, say), the run still ends FINISHED, with a warning and the tag ``boxsup.model_error``;
    its ``checkpoint.pt`` is the same network.
    """
    uri = tracking_uri(cfg["tracking"]["uri"])
    try:
        model_uri = log_run_model(uri, run_id, run_files.path("checkpoint.pt"))
    except Exception as exc:  # any store or MLflow failure; the trained run must not be lost to it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("run %s: its MLflow model could not be logged (%s); use %s", run_id, first,
                    run_files.path("checkpoint.pt"))
        MlflowClient(uri).set_tag(run_id, MODEL_ERROR_TAG, first[:5000])
        return
    log.info("MLflow model of the run: %s", model_uri)


def release_untrained_run(cfg: dict[str, Any], run_id: str, run_files: Location) -> None:
    """After a failure before the first epoch ended: delete the run directory, so its name is free again.

    The MLflow run keeps the config and the error; there is nothing to resume.
    """
    try:
        trained = RunLogger(cfg["tracking"]["uri"], run_id).logged_steps("train_loss")
    except Exception:  # the tracking store itself failed: keep everything
        return
    if not trained:
        run_files.remove_all()


def start_tracked_run(cfg: dict[str, Any], name: str, run_files: Location, tags: dict[str, str] | None) -> dict[str, Any]:
    """The claimed run directory's config.yaml and run.json, and a new MLflow run holding the config; the
    run record. A failure before run.json is written gives the directory (and its claim) back."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / "config.yaml"
            config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
            run_files.upload(config_file, "config.yaml")
            run_id = start_run(cfg["tracking"]["uri"], cfg["tracking"]["experiment"], name, cfg, tags)
            RunLogger(cfg["tracking"]["uri"], run_id).log_artifact(config_file)
        record = {"mlflow_run_id": run_id, "name": name, "config": cfg}
        run_files.write_bytes("run.json", json.dumps(record, indent=2).encode())
    except BaseException:
        with contextlib.suppress(BoxSupError):  # the first error is the one to report
            run_files.remove_all()
        raise
    return record


def train(
    cfg: dict[str, Any], train_data: UnionDataset, annotations: list[ImageAnnotation], store: ProposalStore,
    record: dict[str, Any], run_dir: str, progress: bool, report_to_tune: bool,
) -> None:
    """Proposals when the run needs them (``store`` is already checked), then the training loop in
    this process or through Ray Train."""
    classes = train_data.classes
    box_ids = [a.image_id for a in annotations if a.supervision == Supervision.BOX]
    if box_ids:
        complete_store(store, cfg, train_data, progress, box_ids)
    fault = fault_from_env(str(run_dir))
    spec = AssignmentSpec(cfg["data"], classes, str(store.root), join(run_dir, "labels"),
                          LabelUpdateRule.from_config(cfg), cfg["seed"], cache_mb=cfg["assign"]["cache_mb"], fault=fault)
    job = TrainingJob(cfg, annotations, str(run_dir), spec.label_store, spec.proposal_store,
                      RunLogger(cfg["tracking"]["uri"], record["mlflow_run_id"]), progress=progress, fault=fault,
                      driver_pid=os.getpid())
    if cfg["ray"]["num_workers"] == 0:
        job.context = LocalContext(run_dir, select_device(cfg["train"]["device"]), report_to_tune)
        job.pool = LocalAssignmentPool(spec)
        train_worker(job)
    else:
        fit_with_ray(job, spec, record["name"], run_dir, report_to_tune)


def read_run_record(location: Location) -> dict[str, Any]:
    """The run's ``run.json`` (MLflow run id, name, config) in the run directory ``location``."""
    try:
        return json.loads(location.read_bytes("run.json"))
    except FileNotFoundError:
        raise BoxSupError(f"{location.path('run.json')}: not a run directory (no run.json); "
                          "give the directory `boxsup train` printed") from None
