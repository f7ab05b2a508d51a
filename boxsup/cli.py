"""The ``boxsup`` command: data, proposals, train, eval, predict, export, sweep, runs, demo.

A user's mistake (``BoxSupError``) prints one line and exits with status 2; no traceback. ``predict``
exits with status 1 when some images could not be read (each is named; the others are written).

Results go to stdout, log messages and progress bars to stderr. ``-q`` keeps warnings and errors only
and draws no bars; ``-v`` adds boxsup's own debug messages. Bars are drawn only when stderr is a
terminal (``boxsup.utils.progress``), so a redirected log holds no ``\\r`` frames.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from boxsup.config import DEFAULTS
from boxsup.errors import BoxSupError
from boxsup.utils.files import check_writable_dir, check_writable_file, write_text_atomic
from boxsup.utils.progress import allow_progress, show_progress
from boxsup.utils.storage import check_output_location
from boxsup.utils.text import plural

if TYPE_CHECKING:
    from boxsup.data.dataset import SegmentationDataset

TRIMAP_FIGURE = "trimap.png"  # eval --trimap's figure when --figure is not given
NOISY_LOGGERS = ("alembic", "mlflow", "urllib3", "onnx_ir", "onnxscript")  # the last two: each ONNX export pass
EVAL_METRIC_PREFIX = "eval_"  # boxsup eval's scores in a training run, beside (never over) its own val_miou
EVAL_TAG = "boxsup.eval"  # on that run: the settings of the last evaluation logged to it (JSON)

log = logging.getLogger(__name__)


def package_version() -> str:
    """The installed boxsup's version (its package metadata), else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("boxsup")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from boxsup import __version__

        return __version__


def print_config(cfg: dict[str, Any], comments: list[str] | None = None) -> None:
    """``--print-config``: the config as YAML (keys in the config's order), after ``# `` comment lines."""
    import yaml

    print("".join(f"# {line}\n" for line in comments or []) + yaml.safe_dump(cfg, sort_keys=False), end="")


def _cmd_synth(args: argparse.Namespace) -> None:
    generate: Callable[..., dict[str, Any]]
    if args.style == "photo":
        from boxsup.data.synth_photo import generate_photo_dataset as generate
    else:
        from boxsup.data.synth import generate_dataset as generate

    check_writable_dir(args.out, "--out")
    if args.format == "coco":
        check_writable_dir(_coco_copy_dir(args.out), "--format coco: its copy")
    options: dict[str, Any] = {}
    if args.no_distractors:
        if args.style != "photo":
            raise BoxSupError("data synth: --no-distractors needs --style photo")
        options["distractors"] = False
    if args.classes is not None:
        if args.style != "photo":
            raise BoxSupError("data synth: --classes needs --style photo")
        options["classes"] = tuple(name.strip() for name in args.classes.split(","))
    try:
        summary = generate(args.out, n_images=args.images, size=args.size, seed=args.seed, **options)
    except ValueError as exc:  # the generators check their arguments before writing anything
        raise BoxSupError(f"data synth --style {args.style}: {exc}") from None
    print(f"wrote {args.out}: {synth_summary(summary)}")
    if args.format == "coco":
        from boxsup.data.to_coco import write_coco_copy

        copy = write_coco_copy(Path(args.out), _coco_copy_dir(args.out))
        print(f"wrote its COCO copy {copy['out']} (annotations/instances_<split>.json, <split>/<id>.jpg): "
              f"{coco_copy_summary(copy['splits'])}")


def synth_summary(summary: dict[str, Any]) -> str:
    """A synthetic set's summary (``generate_dataset``'s) in words: images by split, objects by class, box fill."""
    images, objects = summary["images"], summary["objects"]
    by_class = ", ".join(f"{name} {n}" for name, n in objects.items())
    line = (f"{plural(images['trainval'], 'image')} ({images['train']} train, {images['val']} val), "
            f"{plural(sum(objects.values()), 'object')} ({by_class}); "
            f"visible object pixels fill {summary['mean_box_fill']:.0%} of a box on average")
    if "mean_object_fill" in summary:
        line += f" (whole objects, occluded parts included: {summary['mean_object_fill']:.0%})"
    return line


def coco_copy_summary(splits: dict[str, dict[str, Any]]) -> str:
    """``write_coco_copy``'s per-split counts in words; what could not travel is named only when there is some."""
    parts = []
    for split, counts in splits.items():
        part = f"{split} {plural(counts['images'], 'image')}, {plural(counts['objects'], 'object')}"
        notes = [plural(n, noun) + tail for n, noun, tail in (
            (counts["void_regions"], "void region", ""),
            (counts["mask_pixels_not_carried"], "mask pixel", " not carried"),
            (counts["masked_images_without_objects"], "masked image", " without objects")) if n]
        parts.append(part + (f" ({', '.join(notes)})" if notes else ""))
    return "; ".join(parts)


def _coco_copy_dir(out: str) -> Path:
    """Where ``data synth --format coco`` writes the COCO copy of ``out``: ``<out>-coco`` beside it."""
    path = Path(out) if Path(out).name not in ("", ".", "..") else Path(out).resolve()
    return path.with_name(f"{path.name}-coco")


def _cmd_proposals(args: argparse.Namespace) -> None:
    from boxsup.config import DEFAULTS
    from boxsup.data.dataset import skip_summary
    from boxsup.data.sources import build_training_set, resolve_classes
    from boxsup.proposals.generate import build_store
    from boxsup.proposals.store import ProposalStore

    if args.data is None or args.out is None:  # not argparse-required: `proposals import` takes its own
        raise BoxSupError("proposals: give --data ROOT and --out STORE (or `boxsup proposals import --format mcg ...`)")
    if args.local and (args.tasks is not None or args.address is not None):
        raise BoxSupError("proposals: --local runs in this process; drop --tasks and --address")
    cap, max_side = (_checked_proposal_flag(args, name) for name in ("max_candidates", "max_side"))
    check_output_location(args.out, "--out")
    classes = resolve_classes({"data": {"classes": args.classes, "root": args.data}})
    data = {**DEFAULTS["data"], "root": str(Path(args.data).resolve()), "train_split": args.split}
    dataset = build_training_set({"data": data}, classes)  # a bad root or split stops here, before Ray starts
    usable = [ann.image_id for ann in dataset.load_annotations(skip_bad=True)]  # each problem logged once, here
    if not usable:
        raise BoxSupError(f"{dataset.list_file}: none of its {len(dataset.ids)} images can be used "
                          "(see the warnings above)")
    store = ProposalStore(args.out)
    if args.local:
        report = build_store(dataset, store, args.method, cap, args.seed, ids=usable, max_side=max_side)
    else:
        import ray

        from boxsup.platform.proposal_tasks import build_store_on_ray
        from boxsup.platform.ray_train import start_ray

        started = not ray.is_initialized()
        start_ray(args.address)
        try:
            report = build_store_on_ray(dataset, data, store, args.method, cap, args.seed, ids=usable, tasks=args.tasks,
                                        max_side=max_side)
        finally:
            if started:
                ray.shutdown()
        print(report.throughput_line())
    print(f"{args.out}: {report.made} made, {report.reused} already there, skipped: {skip_summary(report.skipped)}")
    print(f"annotation problems (images and boxes left out): {skip_summary(dataset.skip_counts.counts)}")


def _checked_proposal_flag(args: argparse.Namespace, name: str) -> int:
    """``--max-candidates`` or ``--max-side`` (default: the config key's); out of the key's range is one line."""
    from boxsup.config import BOUNDS

    value = getattr(args, name)
    if value not in BOUNDS[f"proposals.{name}"]:
        raise BoxSupError(f"--{name.replace('_', '-')}: {BOUNDS[f'proposals.{name}'].describe()}, got {value}")
    return value


def _cmd_proposals_import(args: argparse.Namespace) -> None:
    from boxsup.config import DEFAULTS, load_config
    from boxsup.data.sources import build_training_set, resolve_classes
    from boxsup.data.voc import VOCDataset
    from boxsup.proposals.mcg import import_mcg
    from boxsup.proposals.store import ProposalStore

    dataset: SegmentationDataset
    if args.config:
        if args.split is not None or args.classes is not None:
            raise BoxSupError("proposals import: --split and --classes go with --data; with --config use --set")
        cfg = load_config(args.config, args.set)
        dataset = build_training_set(cfg)
        default_cap = cfg["proposals"]["max_candidates"]
    else:
        if args.set:
            raise BoxSupError("proposals import: --set goes with --config; with --data use --split and --classes")
        classes = resolve_classes({"data": {"classes": args.classes or "auto", "root": args.data}})
        dataset = VOCDataset(args.data, args.split or "train", classes)
        default_cap = DEFAULTS["proposals"]["max_candidates"]
    cap = default_cap if args.max_candidates is None else args.max_candidates
    check_output_location(args.out, "--out")
    report = import_mcg(dataset, args.mat_dir, ProposalStore(args.out), cap)
    skipped = ", ".join(f"{n} {why} (e.g. {report.examples.get(why, '-')})" for why, n in report.skipped.items()) or "none"
    print(f"{args.out}: {report.made} imported, {report.reused} already there, skipped: {skipped}")
    if report.left_out:
        them = "it" if report.left_out == 1 else "them"
        print(f"{plural(report.left_out, 'image')} {'has' if report.left_out == 1 else 'have'} no pool: a run with "
              f"proposals.method mcg leaves {them} out of every label update (counted); add "
              f"{'its .mat file' if report.left_out == 1 else 'their .mat files'} and import again to use {them}")


def _cmd_train(args: argparse.Namespace) -> None:
    from boxsup.config import load_config
    from boxsup.platform.launch import run_boxsup

    if args.resume:
        if args.config:
            raise BoxSupError("--resume continues a run with its own config; drop --config "
                              "(--set may change train.lr and train.epochs)")
        if args.print_config:
            print_config(_resumed_config(args.resume, args.set), [f"the config of the run in {args.resume}, "
                                                                  "with the changes --set gives it"])
            return
        result = run_boxsup({}, resume=args.resume, changes=args.set)
    elif args.config:
        cfg = load_config(args.config, args.set)
        if args.print_config:
            print_config(cfg)
            return
        result = run_boxsup(cfg)
    else:
        raise BoxSupError("give --config FILE (a new run) or --resume RUN_DIR (continue one)")
    if result.nothing_to_resume:
        print(f"run {result.run_id} ({result.run_dir}) finished (val mIoU {result.val_miou:.4f}); nothing to resume")
        return
    rounds = " ".join(f"{v:.3f}" for v in result.pseudo_miou) or "-"
    print(f"run {result.run_id} ({result.run_dir}): val mIoU {result.val_miou:.4f}, "
          f"pixel accuracy {result.val_pixel_accuracy:.4f}; pseudo-label mIoU by round: {rounds}")
    if result.annotation_problems != "none":
        print(f"annotation problems (images and boxes left out): {result.annotation_problems}")


def _resumed_config(run_dir: str, changes: list[str]) -> dict[str, Any]:
    """The config a resume of ``run_dir`` would run with (its own, then ``changes``); nothing is written."""
    from boxsup.platform.launch import read_run_record, resume_overrides, resumed_config
    from boxsup.utils.storage import canonical, open_location

    pairs = resume_overrides(changes)
    return resumed_config(read_run_record(open_location(canonical(run_dir))), pairs)[0]


def _cmd_eval(args: argparse.Namespace) -> None:
    _check_scales(args.scales)
    _check_eval_flags(args)
    if args.trimap:
        check_writable_file(args.figure or TRIMAP_FIGURE, "--figure")
    if args.out is not None:
        check_writable_file(args.out, "--out")
    args.eval_data, args.crf_set = _eval_data(args)
    if args.crf_search:
        _eval_crf_search(args)
    elif args.trimap:
        _eval_trimap(args)
    else:
        _eval_plain(args)


def _eval_data(args: argparse.Namespace):
    """The split to score (``--data``/``--split``, or ``--config``'s ``data.val``, the config loaded with the
    other ``--set`` texts) and the ``--set`` texts for the CRF, all checked before any checkpoint is read."""
    from boxsup.config import crf_settings, load_config
    from boxsup.evaluation.evaluate import EvalData

    crf = [text for text in args.set if text.startswith("eval.crf_params.")]
    others = [text for text in args.set if text not in crf]
    if args.config is None and others:
        raise BoxSupError(f"--set {others[0]}: without --config, boxsup eval takes only eval.crf_params.* keys")
    if args.config is not None and args.split is not None:
        raise BoxSupError("eval --config: the split is the config's data.val; change it with --set data.val.split=NAME")
    crf_settings(None, crf, "--set")  # a bad --set stops here
    if args.config is None:
        return EvalData(args.data, args.split or "val"), crf
    return EvalData(config=load_config(args.config, others), config_name=str(args.config)), crf


def _eval_checkpoint(args: argparse.Namespace, path: str):
    """One ``--checkpoint`` (a path or URI, ``runs:/``, ``models:/`` or a model folder, as ``predict`` takes)
    ready to score on the split: its CRF settings are its config's ``eval.crf_params``, then ``--set``."""
    from boxsup.config import crf_settings
    from boxsup.evaluation.crf import CRFParams
    from boxsup.evaluation.evaluate import checkpoint_model
    from boxsup.serving.trained_model import read_checkpoint

    state = read_checkpoint(path, _tracking_store(path, args.tracking_uri))
    crf_params = CRFParams.from_settings(crf_settings(state["config"], args.crf_set, f"{path} (its config)"))
    return checkpoint_model(state, path, args.eval_data, crf_params)


def _check_eval_flags(args: argparse.Namespace) -> None:
    """Flags that belong to an analysis not asked for, or out of range: one line each."""
    if args.crf_search and args.trimap:
        raise BoxSupError("eval: --crf-search and --trimap are separate analyses; run one at a time")
    if args.crf_search and (len(args.checkpoint) > 1 or args.crf):
        raise BoxSupError("eval --crf-search: give one --checkpoint and no --crf (the search always runs the CRF)")
    if not args.trimap and args.figure is not None:
        raise BoxSupError("eval: --figure goes with --trimap")
    if not args.crf_search and (args.grid or args.images is not None or args.workers is not None):
        raise BoxSupError("eval: --grid, --images and --workers go with --crf-search")
    if (args.crf_search or args.trimap) and args.out is not None:
        raise BoxSupError("eval: --out records the plain evaluation's scores; drop it with --trimap or --crf-search")
    for flag, values in (("--trimap", args.trimap or []), ("--images", [args.images] if args.images is not None else []),
                         ("--workers", [args.workers] if args.workers is not None else [])):
        if any(v < 1 for v in values):
            raise BoxSupError(f"{flag}: must be whole numbers >= 1, got {min(values)}")


def _eval_plain(args: argparse.Namespace) -> None:
    from boxsup.evaluation.evaluate import evaluate, scores_record

    records = []
    for path in args.checkpoint:
        loaded = _eval_checkpoint(args, path)
        if len(args.checkpoint) > 1:
            print(f"{path}:")
        if args.crf:
            print(f"CRF: {loaded.crf_params.describe()}")
        confusion = evaluate(loaded.model, loaded.dataset, loaded.device, tuple(args.scales), args.crf,
                             crf_params=loaded.crf_params)
        scores = confusion.compute()
        print(f"mIoU {scores.miou:.4f}  pixel accuracy {scores.pixel_accuracy:.4f}")
        for name, iou in zip(loaded.class_names, scores.class_iou):
            print(f"  {name:<16} {iou:.4f}")
        record = {**scores_record(scores, loaded.class_names), "checkpoint": path,
                  "data": args.eval_data.describe(), "images": len(loaded.dataset.ids),
                  "scales": list(args.scales), "crf": args.crf,
                  "crf_params": loaded.crf_params.settings() if args.crf else None,
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "boxsup_version": package_version()}
        record["mlflow_run"] = _log_eval_to_run(args, path, record) if args.log_to_run else None
        records.append(record)
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(records[0] if len(records) == 1 else records, indent=2) + "\n")
        print(f"wrote {args.out}")


def _checkpoint_run(path: str, configured: str | None) -> tuple[str, str] | None:
    """(tracking URI, run id) of the MLflow run that wrote the checkpoint ``path``, where it says so cleanly:
    ``runs:/<run id>/...``; ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (the version's source run); a
    ``checkpoint.pt`` in a run directory, whose ``run.json`` names its run (and, without ``--tracking-uri``,
    its store). None otherwise (a copied file, a model folder, ``models:/NAME/latest``...)."""
    from boxsup.platform.tracking import tracking_uri
    from boxsup.utils.storage import open_location

    if path.startswith("runs:/"):
        run_id = path[len("runs:/"):].split("/", 1)[0]
        return (_tracking_store(path, configured), run_id) if run_id else None
    if path.startswith("models:/"):
        return _model_version_run(path, _tracking_store(path, configured))
    folder, _, name = path.rstrip("/").rpartition("/")
    if name != "checkpoint.pt":
        return None
    try:
        location = open_location(folder or ("/" if path.startswith("/") else "."))
        if not location.exists("run.json"):
            return None
        record = json.loads(location.read_bytes("run.json"))
        return tracking_uri(configured or record["config"]["tracking"]["uri"]), str(record["mlflow_run_id"])
    except Exception as exc:  # an unreadable or foreign run.json (or store) only means no run to log to
        log.debug("%s: its folder's run.json names no MLflow run (%s: %s)", path, type(exc).__name__, exc)
        return None


def _model_version_run(uri: str, store: str) -> tuple[str, str] | None:
    """The source run of the registered model version ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, _, version = uri[len("models:/"):].rstrip("/").partition("/")
    name, _, alias = name.partition("@")
    if not (alias or version.isdigit()):
        log.debug("%s: not a model version or alias; its run is not looked up", uri)
        return None
    try:
        client = MlflowClient(store)
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        log.debug("%s: no model version found in %s (%s)", uri, store, exc)
        return None
    return (store, found.run_id) if found.run_id else None


def _log_eval_to_run(args: argparse.Namespace, path: str, record: dict[str, Any]) -> dict[str, str] | None:
    """Log the scores in ``record`` to the MLflow run the checkpoint ``path`` came from, as ``eval_miou``,
    ``eval_pixel_accuracy`` and ``eval_iou_<class>`` (each evaluation the next step of their history), and the
    evaluation's settings as the tag ``boxsup.eval``; the run's own metrics (``val_miou``, ...) stay as they
    are. Returns the run and store, or None when the checkpoint names no run or logging failed (a warning)."""
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    found = _checkpoint_run(path, args.tracking_uri)
    if found is None:
        log.debug("%s: no MLflow run identified; the scores are not logged to one", path)
        return None
    uri, run_id = found
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():  # never make an empty store
        log.warning("%s: the scores were not logged to MLflow run %s: no store at %s (give --tracking-uri)",
                    path, run_id, uri)
        return None
    metrics = {"miou": record["miou"], "pixel_accuracy": record["pixel_accuracy"],
               **{f"iou_{_metric_name(name)}": iou for name, iou in record["class_iou"].items()}}
    settings = {key: record[key] for key in ("checkpoint", "data", "scales", "crf", "crf_params", "date")}
    try:
        client = MlflowClient(uri)
        client.get_run(run_id)  # a run of another store is one warning, before anything is logged
        step = len(client.get_metric_history(run_id, f"{EVAL_METRIC_PREFIX}miou"))
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"{EVAL_METRIC_PREFIX}{key}", value, now, step)
                                          for key, value in metrics.items() if value is not None],
                         tags=[RunTag(EVAL_TAG, json.dumps(settings))])
    except MlflowException as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s: the scores were not logged to MLflow run %s in %s (%s)", path, run_id, uri, first)
        return None
    log.info("%s: logged %smiou, %spixel_accuracy and %siou_<class> to MLflow run %s (%s)", path,
             EVAL_METRIC_PREFIX, EVAL_METRIC_PREFIX, EVAL_METRIC_PREFIX, run_id, uri)
    return {"run_id": run_id, "tracking_uri": uri}


def _metric_name(name: str) -> str:
    """A class name as MLflow accepts it in a metric name (letters, digits, ``_-. /``; anything else ``_``)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def _eval_trimap(args: argparse.Namespace) -> None:
    from boxsup.evaluation.evaluate import checkpoint_labels, evaluate_trimap
    from boxsup.evaluation.figures import trimap_figure
    from boxsup.evaluation.trimap import format_trimap_table

    curves = {}
    for path, label in zip(args.checkpoint, checkpoint_labels(args.checkpoint)):
        loaded = _eval_checkpoint(args, path)
        crf = f"; CRF {loaded.crf_params.describe()}" if args.crf else ""
        confusion, trimap = evaluate_trimap(loaded.model, loaded.dataset, loaded.device, args.trimap, tuple(args.scales),
                                            args.crf, loaded.crf_params)
        scores = confusion.compute()
        print(f"{label} ({path}): mIoU {scores.miou:.4f}  pixel accuracy {scores.pixel_accuracy:.4f}{crf}")
        curves[label] = trimap.compute()
    print(format_trimap_table(curves))
    figure = args.figure or TRIMAP_FIGURE
    trimap_figure(curves, figure)
    print(f"wrote {figure}")


def _eval_crf_search(args: argparse.Namespace) -> None:
    from boxsup.evaluation.crf_search import format_search, parse_grid, search_checkpoint

    grid = parse_grid(args.grid) if args.grid else None
    loaded = _eval_checkpoint(args, args.checkpoint[0])
    result = search_checkpoint(loaded, grid, tuple(args.scales), args.images, args.workers or 1)
    split = f"{args.config}'s data.val" if args.config else args.eval_data.split
    print(format_search(result, f"CRF search for {args.checkpoint[0]} on {split}"))


def _check_scales(scales: list[float] | None) -> None:
    bad = [s for s in scales or [] if not 0 < s < float("inf")]
    if bad:
        raise BoxSupError(f"--scales: every scale must be a finite number > 0, got {bad[0]:g}")


def _tracking_store(checkpoint: str, configured: str | None) -> str:
    """The MLflow store that a ``runs:/`` or ``models:/`` ``checkpoint`` is looked up in (``--tracking-uri``,
    else the default); a tracking server is asked whether it answers only for such a checkpoint."""
    from boxsup.platform.tracking import check_tracking_store, tracking_uri
    from boxsup.serving.trained_model import MLFLOW_SCHEMES

    return check_tracking_store(configured) if checkpoint.startswith(MLFLOW_SCHEMES) else tracking_uri(configured)


def _trained_model(args: argparse.Namespace):
    from boxsup.serving.trained_model import load_trained_model

    return load_trained_model(args.checkpoint, _tracking_store(args.checkpoint, args.tracking_uri))


def _cmd_predict(args: argparse.Namespace) -> int:
    from boxsup.serving.image_inputs import resolve_images
    from boxsup.serving.predict import predict_images

    _check_scales(args.scales)
    paths = resolve_images(args.images)  # a wrong --images stops here, before the model is fetched
    check_writable_dir(args.out, "--out")
    model = _trained_model(args)
    scales = tuple(args.scales) if args.scales else model.eval_scales
    crf = model.eval_crf if args.crf is None else args.crf
    print(f"{plural(len(paths), 'image')}, model {args.checkpoint} ({model.config['model']['backbone']}, "
          f"{plural(len(model.classes), 'class', 'classes')}), scales {' '.join(f'{s:g}' for s in scales)}, "
          f"crf {'on' if crf else 'off'}")
    report = predict_images(model, paths, Path(args.out), scales, crf, args.batch_size,
                            args.overlay_format if args.overlay else None, progress=show_progress())
    print(report.summary())
    if report.unreadable and not report.written:
        raise BoxSupError(f"--images: none of the {len(report.unreadable)} images could be read")
    return 1 if report.unreadable else 0


def _cmd_export(args: argparse.Namespace) -> None:
    from boxsup.serving.export import export_model

    check_writable_file(args.out, "--out")
    print(export_model(_trained_model(args), args.format, args.out).summary())


def _cmd_sweep(args: argparse.Namespace) -> None:
    from boxsup.config import load_config
    from boxsup.platform.runs_table import format_runs_table
    from boxsup.platform.sweep import run_sweep

    cfg = load_config(args.config, args.set)
    if args.print_config:
        from boxsup.platform.search_space import load_search_space
        from boxsup.platform.sweep import check_against_config

        space = load_search_space(args.space)
        check_against_config(space, cfg, str(args.space))
        print_config(cfg, [f"the base config of every trial; {args.space} sets {', '.join(space.specs) or 'no key'} "
                           "per trial"])
        return
    result = run_sweep(args.space, cfg, args.experiment)
    print(f"\nsweep {result.experiment}: {plural(len(result.trials), 'trial run')} in MLflow at {result.tracking_uri}")
    for line in result.errors:
        print(f"  failed trial: {line}")
    if result.trials:
        print(format_runs_table(result.trials, result.swept))
    ui = result.tracking_uri if result.tracking_uri.startswith("http") else f"mlflow ui --backend-store-uri {result.tracking_uri}"
    print(f"again later: boxsup runs --experiment {result.experiment} --tracking-uri {result.tracking_uri}\n"
          f"side by side: {ui}")


def _cmd_runs(args: argparse.Namespace) -> None:
    from boxsup.platform.runs_table import runs_export, runs_report

    if args.json or args.csv:
        print(runs_export(args.tracking_uri, args.experiment, "json" if args.json else "csv"))
    else:
        print(runs_report(args.tracking_uri, args.experiment))


def _cmd_data_check(args: argparse.Namespace) -> None:
    from boxsup.config import load_config
    from boxsup.data.check import check_source, format_report
    from boxsup.data.sources import build_datasets

    cfg = load_config(args.config, args.set)
    train, val = build_datasets(cfg)
    reports = [check_source(source, "train", args.decode) for source in train.sources]
    reports.append(check_source(val, "val", args.decode))
    print(format_report(reports, train.classes))


def _cmd_demo(args: argparse.Namespace) -> None:
    if args.seeds < 1:
        raise BoxSupError(f"demo: --seeds must be at least 1, got {args.seeds}")
    if args.extra_boxes and args.seeds != 1:
        raise BoxSupError("demo: --seeds is for the six-row comparison; drop it with --extra-boxes")
    if args.print_config:
        _print_demo_config(args)
        return
    if args.data is not None and not (Path(args.data).is_dir() and any(Path(args.data).iterdir())):
        check_writable_dir(args.data, "demo --data")  # the demo set is to be written there
    if args.extra_boxes:
        from boxsup.demo_extra_boxes import run_extra_boxes_demo

        run_extra_boxes_demo(args.config, Path(args.data or "demo_data"), args.set)
        return
    from boxsup.demo import run_demo

    run_demo(args.config, None if args.data is None else Path(args.data), args.set, args.seeds)


def _print_demo_config(args: argparse.Namespace) -> None:
    """``demo --print-config``: the config every row starts from (the data, then ``--set``), each row's own
    settings in comments; with ``--extra-boxes``, its two runs' configs as two YAML documents. Nothing is
    written, the demo set included."""
    import yaml

    from boxsup.config import load_config

    if args.extra_boxes:
        from boxsup.demo_extra_boxes import extra_boxes_configs

        data = Path(args.data or "demo_data")
        runs = extra_boxes_configs(args.config, data, data.parent / f"{data.name}-coco-boxes", args.set)
        print("".join(f"--- # {name}\n{yaml.safe_dump(cfg, sort_keys=False)}" for name, cfg in runs), end="")
        return
    from boxsup.demo import VARIANTS, demo_data_settings, row_settings

    settings, n_sources = demo_data_settings(args.config, None if args.data is None else Path(args.data), args.set,
                                             write=False)
    cfg = load_config(args.config, [*settings, *args.set])
    rows = [f"  {name}: {' '.join(row_settings(variant, n_sources))}" for name, variant in VARIANTS]
    seeds = [] if args.seeds == 1 else [f"each row trains {args.seeds} times, with seed {cfg['seed']} "
                                        f"to {cfg['seed'] + args.seeds - 1}"]
    print_config(cfg, ["boxsup demo: every row trains with this config, its own settings (a --set of the same key "
                       "wins) and its own run name (demo-<row>):", *rows, *seeds])


def _add_set(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE ...``: several pairs after one flag, and the flag repeated, all collected in order."""
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=help_text)


def _add_print_config(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--print-config", action="store_true",
                        help=f"print {what} as YAML (defaults, the config file, then --set; checked) and exit "
                             "without running anything")


TRACKING_HELP = "MLflow store of runs:/ and models:/ URIs (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one that its text does not give already
    (a flag that is off, an option without a value and the help and version actions show none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if isinstance(action, argparse.BooleanOptionalAction) and isinstance(default, bool) and "default" not in text:
            return f"{text} (default: {action.option_strings[0 if default else 1]})"
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or default == [] or "default" in text or action.nargs == 0):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults (``HelpFormatter``); its subcommands' parsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    """``-q`` and ``-v``; on a subcommand (``default`` SUPPRESS) they may follow it: ``boxsup train -q ...``."""
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", default=default,
                      help="log warnings and errors only, and draw no progress bars (results still print)")
    talk.add_argument("-v", "--verbose", action="store_true", default=default,
                      help="also log boxsup's debug messages (other libraries' stay hidden)")


def subcommand_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser`` (``boxsup data synth``, ``boxsup proposals import``, ...), depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # an alias would repeat a parser
                yield child
                yield from subcommand_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="boxsup", description="BoxSup: segmentation networks trained from boxes")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print boxsup's version and exit")
    _add_verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic dataset (the demo set, or photo-like) in the VOC layout")
    synth.add_argument("--style", choices=("demo", "photo"), default="demo",
                       help="demo: the demo's textured shapes; photo: harder, photo-textured, occluded objects")
    synth.add_argument("--out", required=True, help="dataset root to write (the VOC layout)")
    synth.add_argument("--images", type=int, default=240, help="images in all (a quarter of them the val split)")
    synth.add_argument("--size", type=int, default=128, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same set")
    synth.add_argument("--no-distractors", action="store_true",
                       help="photo style: no unlabelled blobs and strokes on the background")
    synth.add_argument("--classes", default=None, metavar="NAMES",
                       help="photo style: comma-separated subset of animal,moon,ring,bracket,star,signpost "
                            "to draw, in label order (default: all six)")
    synth.add_argument("--format", choices=("voc", "coco"), default="voc",
                       help="voc: the VOC layout in --out; coco: that too, plus a COCO copy of it in <out>-coco "
                            "(annotations/instances_{train,val}.json, {train,val}/<id>.jpg)")
    synth.set_defaults(func=_cmd_synth)
    check = data.add_parser("check", help="images, boxes and masks per class and source of a config, and every problem")
    check.add_argument("--config", required=True, help="run config (YAML) whose training and val sources to check")
    _add_set(check, "override config keys")
    check.add_argument("--decode", action="store_true", help="also decode every image and mask (slower)")
    check.set_defaults(func=_cmd_data_check)

    prop = sub.add_parser("proposals", help="fill a proposal store for a dataset split (or import MCG files)",
                          description="`boxsup proposals --data ROOT --out STORE` computes proposals; "
                                      "`boxsup proposals import --format mcg ...` imports published MCG files")
    prop.add_argument("--data", help="dataset root (VOC layout); required")
    prop.add_argument("--split", default="train", help="the split whose images get proposals")
    prop.add_argument("--method", choices=("ss", "grabcut", "rectangles"), default="ss",
                      help="ss: selective search; grabcut: one GrabCut segment per box; rectangles: the boxes "
                           "themselves")
    prop.add_argument("--out", help="store directory; required")
    prop.add_argument("--classes", default="auto",
                      help="auto (<data>/classes.txt if present, else the VOC classes), voc, or a file of names")
    prop.add_argument("--max-candidates", type=int, default=DEFAULTS["proposals"]["max_candidates"],
                      help="candidates kept per image (default: proposals.max_candidates's, %(default)s)")
    prop.add_argument("--max-side", type=int, default=DEFAULTS["proposals"]["max_side"],
                      help="computed on a copy at most this many pixels long (default: proposals.max_side's, %(default)s)")
    prop.add_argument("--seed", type=int, default=0, help="random seed of the methods that draw (selective search's "
                                                           "diversification)")
    prop.add_argument("--tasks", type=int, help="Ray tasks at a time (default: every CPU of the cluster)")
    prop.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on every core)")
    prop.add_argument("--local", action="store_true", help="run in this process, without Ray")
    prop.set_defaults(func=_cmd_proposals)
    prop_sub = prop.add_subparsers(dest="proposals_command", metavar="import")  # optional: plain `proposals` computes
    imp = prop_sub.add_parser("import", help="turn published proposal files (MCG .mat) into a proposal store")
    imp.add_argument("--format", choices=("mcg",), required=True, help="the files' format: mcg (MCG's .mat files)")
    imp.add_argument("--mat-dir", required=True, help="folder of <image id>.mat files")
    given = imp.add_mutually_exclusive_group(required=True)
    given.add_argument("--config", help="run config (YAML): its training set and proposals.max_candidates")
    given.add_argument("--data", help="dataset root (VOC layout)")
    _add_set(imp, "override config keys (with --config)")
    imp.add_argument("--split", help="with --data (default train)")
    imp.add_argument("--classes", help="with --data: auto (default), voc, or a file of names")
    imp.add_argument("--out", required=True, help="store directory (then set proposals.store to it)")
    imp.add_argument("--max-candidates", type=int, help="default: the config's proposals.max_candidates "
                                                         f"({DEFAULTS['proposals']['max_candidates']} unless set)")
    imp.set_defaults(func=_cmd_proposals_import)

    train = sub.add_parser("train", help="train one model (one MLflow run)")
    train.add_argument("--config", help="run config (YAML)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    _add_set(train, "override config keys")
    _add_print_config(train, "the run's config (with --resume: the run's own, with the --set changes)")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate checkpoints on a labelled split; trimap and CRF-search analyses",
                        description="Scores per class; --trimap: boundary vs interior mIoU by band width (Fig. 4); "
                                    "--crf-search: grid-search the dense CRF's parameters (docs/analyses.md)")
    ev.add_argument("--checkpoint", required=True, nargs="+", metavar="CHECKPOINT",
                    help="one or several checkpoint.pt (paths or URIs), runs:/<run id>/model, models:/NAME/VERSION "
                         "or model folders; --crf-search takes one")
    where = ev.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="a dataset root in the VOC layout (with --split, default val)")
    where.add_argument("--config", help="a run config: score on its data.val source, any format (COCO, SBD, ...)")
    ev.add_argument("--split", help="with --data: the split (default val)")
    ev.add_argument("--scales", type=float, nargs="+", default=[1.0],
                    help="test-time scales: the network's outputs at each are averaged")
    ev.add_argument("--crf", action="store_true", help="refine with the dense CRF (its parameters: eval.crf_params "
                                                       "of the checkpoint's config, else DeepLab's, then --set)")
    _add_set(ev, "override eval.crf_params.* keys, e.g. --set eval.crf_params.bi_w=5; with --config, any config key")
    ev.add_argument("--out", metavar="FILE",
                    help="also write the scores as JSON (mIoU, per-class IoU, pixel accuracy, the checkpoint, data, "
                         "scales, CRF settings, date, boxsup version; a list of those for several checkpoints)")
    ev.add_argument("--log-to-run", action=argparse.BooleanOptionalAction, default=True,
                    help="log the scores to the checkpoint's MLflow run (a runs:/ or models:/ URI, or a run "
                         "directory's checkpoint.pt) as eval_miou, eval_pixel_accuracy, eval_iou_<class>; its "
                         "val_miou stays")
    ev.add_argument("--trimap", type=int, nargs="+", metavar="PX",
                    help="boundary and interior mIoU in bands of these widths around GT boundaries, e.g. 1 3 5 10 20 40")
    ev.add_argument("--figure", help="with --trimap: the figure, mIoU against band width (default trimap.png)")
    ev.add_argument("--crf-search", action="store_true",
                    help="grid-search the CRF's parameters on --split (hold it out of training); prints the best")
    ev.add_argument("--grid", action="extend", nargs="+", metavar="NAME=V1,V2",
                    help="with --crf-search: the grid (default bi_w=3,4,5 bi_xy_std=50,80,121 bi_rgb_std=3,5,10)")
    ev.add_argument("--images", type=int, help="with --crf-search: only the first N images with masks (DeepLab: 100)")
    ev.add_argument("--workers", type=int, help="with --crf-search: processes running the CRF (default 1)")
    ev.add_argument("--tracking-uri", help="MLflow store of runs:/ and models:/ URIs, and of the run a run "
                                           "directory's checkpoint.pt came from (default: MLFLOW_TRACKING_URI, else "
                                           "sqlite:///mlflow.db; for a run directory: the store its run.json names)")
    ev.set_defaults(func=_cmd_eval)

    pred = sub.add_parser("predict", help="label maps (VOC-palette PNGs) for images, from a checkpoint or MLflow model")
    pred.add_argument("--checkpoint", required=True,
                      help="checkpoint.pt (path or URI), runs:/<run id>/model, models:/NAME/VERSION, or a model folder")
    pred.add_argument("--images", required=True, nargs="+", metavar="DIR|GLOB|LIST",
                      help="folders, glob patterns, image files, or text files listing image paths (one per line, "
                           "relative to the list's folder)")
    pred.add_argument("--out", required=True, help="folder for <image stem>.png label maps")
    pred.add_argument("--overlay", action="store_true", help="also write colour overlays into <out>/overlay/")
    pred.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg", help="file format of the overlays")
    pred.add_argument("--scales", type=float, nargs="+", help="test-time scales (default: the run's eval.scales)")
    pred.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                      help="dense CRF refinement (default: the run's eval.crf)")
    pred.add_argument("--batch-size", type=int, default=8, help="images per forward pass (same-size images batch)")
    pred.add_argument("--tracking-uri", help=TRACKING_HELP)
    pred.set_defaults(func=_cmd_predict)

    exp = sub.add_parser("export", help="the network as TorchScript or ONNX (dynamic N, H, W), checked against PyTorch")
    exp.add_argument("--checkpoint", required=True, help="as for predict: a checkpoint or an MLflow model URI")
    exp.add_argument("--format", choices=("torchscript", "onnx"), required=True, help="the file's format")
    exp.add_argument("--out", required=True, help="file to write (e.g. model.pt or model.onnx)")
    exp.add_argument("--tracking-uri", help=TRACKING_HELP)
    exp.set_defaults(func=_cmd_export)

    sweep = sub.add_parser("sweep", help="a Ray Tune sweep: every trial a whole run, all in one MLflow experiment")
    sweep.add_argument("--space", required=True, help="search space (YAML), e.g. search_spaces/demo.yaml")
    sweep.add_argument("--config", required=True, help="base run config (YAML)")
    _add_set(sweep, "override base config keys")
    sweep.add_argument("--experiment", help="MLflow experiment of the sweep (default: <space name>-<time>)")
    _add_print_config(sweep, "the base config of every trial (the space checked against it)")
    sweep.set_defaults(func=_cmd_sweep)

    runs = sub.add_parser("runs", help="an experiment's runs from MLflow, best val_miou first")
    runs.add_argument("--experiment", required=True, help="MLflow experiment name (e.g. a sweep's)")
    runs.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    machine = runs.add_mutually_exclusive_group()
    machine.add_argument("--json", action="store_true",
                         help="the table's rows as a JSON list of objects (numbers unrounded, duration in seconds)")
    machine.add_argument("--csv", action="store_true", help="the table's rows as CSV, a header line first")
    runs.set_defaults(func=_cmd_runs)

    demo = sub.add_parser("demo", help="the whole comparison on the synthetic demo data")
    demo.add_argument("--config", default="configs/demo.yaml", help="run config every row starts from")
    demo.add_argument("--data", help="a VOC-layout dataset root (default: the config's data.root, else demo_data); "
                                     "the synthetic demo set is written there only if it is absent or empty. "
                                     "Leave it out with a config that reads data.sources (COCO, SBD, ...)")
    _add_set(demo, "override config keys of every variant")
    demo.add_argument("--seeds", type=int, default=1,
                      help="train every row this many times (the config's seed and the next ones) and report "
                           "mean ± standard deviation: single runs differ by one to three points of val mIoU")
    demo.add_argument("--extra-boxes", action="store_true",
                      help="instead: masks on 1/6 of the images vs the same + COCO-format boxes on the rest")
    _add_print_config(demo, "the config every row starts from (with --extra-boxes: both runs' configs)")
    demo.set_defaults(func=_cmd_demo)

    for child in subcommand_parsers(parser):
        _add_verbosity(child, argparse.SUPPRESS)
    return parser


@contextlib.contextmanager
def logging_setup(quiet: bool, verbose: bool) -> Iterator[None]:
    """Log messages to stderr: INFO and up (``quiet``: WARNING and up; ``verbose``: boxsup's DEBUG too, other
    libraries' not), the chattiest libraries at WARNING; progress bars off with ``quiet``. The levels are
    restored afterwards, so a process that calls ``main`` more than once (the tests) keeps its own."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # the handler, once per process
    changed = [logging.getLogger(), logging.getLogger("boxsup"), *map(logging.getLogger, NOISY_LOGGERS)]
    before = [logger.level for logger in changed]
    logging.getLogger().setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("boxsup").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    allow_progress(not quiet)
    try:
        yield
    finally:
        allow_progress(True)
        for logger, level in zip(changed, before):
            logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose: give one")
    with logging_setup(args.quiet, args.verbose):
        try:
            status = args.func(args)  # None: success; predict returns 1 when some images could not be read
        except BoxSupError as exc:
            print(f"boxsup: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("boxsup: interrupted", file=sys.stderr)
            return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
