"""The ``boxsup`` command: data, proposals, train, eval, predict, export, sweep, runs, demo.

A user's mistake (``BoxSupError``) prints one line and exits with status 2; no traceback. ``predict``
exits with status 1 when some images could not be read (each is named; the others are written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from boxsup.config import DEFAULTS
from boxsup.errors import BoxSupError
from boxsup.utils.files import check_writable_dir, check_writable_file
from boxsup.utils.storage import check_output_location

if TYPE_CHECKING:
    from boxsup.data.dataset import SegmentationDataset

TRIMAP_FIGURE = "trimap.png"  # eval --trimap's figure when --figure is not given


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
    print(f"wrote {args.out}: {summary}")
    if args.format == "coco":
        from boxsup.data.to_coco import write_coco_copy

        copy = write_coco_copy(Path(args.out), _coco_copy_dir(args.out))
        print(f"wrote its COCO copy {copy['out']} (annotations/instances_<split>.json, <split>/<id>.jpg): {copy['splits']}")


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
        print(f"{report.left_out} images have no pool: a run with proposals.method mcg leaves them out of every "
              "label update (counted); add their .mat files and import again to use them")


def _cmd_train(args: argparse.Namespace) -> None:
    from boxsup.config import load_config
    from boxsup.platform.launch import run_boxsup

    if args.resume:
        if args.config:
            raise BoxSupError("--resume continues a run with its own config; drop --config "
                              "(--set may change train.lr and train.epochs)")
        result = run_boxsup({}, resume=args.resume, changes=args.set)
    elif args.config:
        result = run_boxsup(load_config(args.config, args.set))
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


def _cmd_eval(args: argparse.Namespace) -> None:
    _check_scales(args.scales)
    _check_eval_flags(args)
    if args.trimap:
        check_writable_file(args.figure or TRIMAP_FIGURE, "--figure")
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
    for flag, values in (("--trimap", args.trimap or []), ("--images", [args.images] if args.images is not None else []),
                         ("--workers", [args.workers] if args.workers is not None else [])):
        if any(v < 1 for v in values):
            raise BoxSupError(f"{flag}: must be whole numbers >= 1, got {min(values)}")


def _eval_plain(args: argparse.Namespace) -> None:
    from boxsup.evaluation.evaluate import evaluate

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
    print(f"{len(paths)} images, model {args.checkpoint} ({model.config['model']['backbone']}, "
          f"{len(model.classes)} classes), scales {' '.join(f'{s:g}' for s in scales)}, crf {'on' if crf else 'off'}")
    report = predict_images(model, paths, Path(args.out), scales, crf, args.batch_size,
                            args.overlay_format if args.overlay else None)
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
    result = run_sweep(args.space, cfg, args.experiment)
    print(f"\nsweep {result.experiment}: {len(result.trials)} trial runs in MLflow at {result.tracking_uri}")
    for line in result.errors:
        print(f"  failed trial: {line}")
    if result.trials:
        print(format_runs_table(result.trials, result.swept))
    ui = result.tracking_uri if result.tracking_uri.startswith("http") else f"mlflow ui --backend-store-uri {result.tracking_uri}"
    print(f"again later: boxsup runs --experiment {result.experiment} --tracking-uri {result.tracking_uri}\n"
          f"side by side: {ui}")


def _cmd_runs(args: argparse.Namespace) -> None:
    from boxsup.platform.runs_table import runs_report

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
    if args.data is not None and not (Path(args.data).is_dir() and any(Path(args.data).iterdir())):
        check_writable_dir(args.data, "demo --data")  # the demo set is to be written there
    if args.extra_boxes:
        from boxsup.demo_extra_boxes import run_extra_boxes_demo

        if args.seeds != 1:
            raise BoxSupError("demo: --seeds is for the six-row comparison; drop it with --extra-boxes")
        run_extra_boxes_demo(args.config, Path(args.data or "demo_data"), args.set)
        return
    from boxsup.demo import run_demo

    run_demo(args.config, None if args.data is None else Path(args.data), args.set, args.seeds)


def _add_set(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE ...``: several pairs after one flag, and the flag repeated, all collected in order."""
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boxsup", description="BoxSup: segmentation networks trained from boxes")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic dataset (the demo set, or photo-like) in the VOC layout")
    synth.add_argument("--style", choices=("demo", "photo"), default="demo",
                       help="demo: the demo's textured shapes; photo: harder, photo-textured, occluded objects")
    synth.add_argument("--out", required=True)
    synth.add_argument("--images", type=int, default=240)
    synth.add_argument("--size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
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
    check.add_argument("--config", required=True)
    _add_set(check, "override config keys")
    check.add_argument("--decode", action="store_true", help="also decode every image and mask (slower)")
    check.set_defaults(func=_cmd_data_check)

    prop = sub.add_parser("proposals", help="fill a proposal store for a dataset split (or import MCG files)",
                          description="`boxsup proposals --data ROOT --out STORE` computes proposals; "
                                      "`boxsup proposals import --format mcg ...` imports published MCG files")
    prop.add_argument("--data", help="dataset root (VOC layout); required")
    prop.add_argument("--split", default="train")
    prop.add_argument("--method", choices=("ss", "grabcut", "rectangles"), default="ss")
    prop.add_argument("--out", help="store directory; required")
    prop.add_argument("--classes", default="auto",
                      help="auto (<data>/classes.txt if present, else the VOC classes), voc, or a file of names")
    prop.add_argument("--max-candidates", type=int, default=DEFAULTS["proposals"]["max_candidates"],
                      help="candidates kept per image (default: proposals.max_candidates's, %(default)s)")
    prop.add_argument("--max-side", type=int, default=DEFAULTS["proposals"]["max_side"],
                      help="computed on a copy at most this many pixels long (default: proposals.max_side's, %(default)s)")
    prop.add_argument("--seed", type=int, default=0)
    prop.add_argument("--tasks", type=int, help="Ray tasks at a time (default: every CPU of the cluster)")
    prop.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on every core)")
    prop.add_argument("--local", action="store_true", help="run in this process, without Ray")
    prop.set_defaults(func=_cmd_proposals)
    prop_sub = prop.add_subparsers(dest="proposals_command", metavar="import")  # optional: plain `proposals` computes
    imp = prop_sub.add_parser("import", help="turn published proposal files (MCG .mat) into a proposal store")
    imp.add_argument("--format", choices=("mcg",), required=True)
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
    ev.add_argument("--scales", type=float, nargs="+", default=[1.0])
    ev.add_argument("--crf", action="store_true", help="refine with the dense CRF (its parameters: eval.crf_params "
                                                       "of the checkpoint's config, else DeepLab's, then --set)")
    _add_set(ev, "override eval.crf_params.* keys, e.g. --set eval.crf_params.bi_w=5; with --config, any config key")
    ev.add_argument("--trimap", type=int, nargs="+", metavar="PX",
                    help="boundary and interior mIoU in bands of these widths around GT boundaries, e.g. 1 3 5 10 20 40")
    ev.add_argument("--figure", help="with --trimap: the figure, mIoU against band width (default trimap.png)")
    ev.add_argument("--crf-search", action="store_true",
                    help="grid-search the CRF's parameters on --split (hold it out of training); prints the best")
    ev.add_argument("--grid", action="extend", nargs="+", metavar="NAME=V1,V2",
                    help="with --crf-search: the grid (default bi_w=3,4,5 bi_xy_std=50,80,121 bi_rgb_std=3,5,10)")
    ev.add_argument("--images", type=int, help="with --crf-search: only the first N images with masks (DeepLab: 100)")
    ev.add_argument("--workers", type=int, help="with --crf-search: processes running the CRF (default 1)")
    ev.add_argument("--tracking-uri", help="MLflow store of runs:/ URIs (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    ev.set_defaults(func=_cmd_eval)

    pred = sub.add_parser("predict", help="label maps (VOC-palette PNGs) for images, from a checkpoint or MLflow model")
    pred.add_argument("--checkpoint", required=True,
                      help="checkpoint.pt (path or URI), runs:/<run id>/model, models:/NAME/VERSION, or a model folder")
    pred.add_argument("--images", required=True, nargs="+", metavar="DIR|GLOB|LIST",
                      help="folders, glob patterns, image files, or text files listing image paths (one per line, "
                           "relative to the list's folder)")
    pred.add_argument("--out", required=True, help="folder for <image stem>.png label maps")
    pred.add_argument("--overlay", action="store_true", help="also write colour overlays into <out>/overlay/")
    pred.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg")
    pred.add_argument("--scales", type=float, nargs="+", help="test-time scales (default: the run's eval.scales)")
    pred.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                      help="dense CRF refinement (default: the run's eval.crf)")
    pred.add_argument("--batch-size", type=int, default=8, help="images per forward pass (same-size images batch)")
    pred.add_argument("--tracking-uri", help="MLflow store of runs:/ URIs (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    pred.set_defaults(func=_cmd_predict)

    exp = sub.add_parser("export", help="the network as TorchScript or ONNX (dynamic N, H, W), checked against PyTorch")
    exp.add_argument("--checkpoint", required=True, help="as for predict: a checkpoint or an MLflow model URI")
    exp.add_argument("--format", choices=("torchscript", "onnx"), required=True)
    exp.add_argument("--out", required=True, help="file to write (e.g. model.pt or model.onnx)")
    exp.add_argument("--tracking-uri", help="MLflow store of runs:/ URIs (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    exp.set_defaults(func=_cmd_export)

    sweep = sub.add_parser("sweep", help="a Ray Tune sweep: every trial a whole run, all in one MLflow experiment")
    sweep.add_argument("--space", required=True, help="search space (YAML), e.g. search_spaces/demo.yaml")
    sweep.add_argument("--config", required=True, help="base run config (YAML)")
    _add_set(sweep, "override base config keys")
    sweep.add_argument("--experiment", help="MLflow experiment of the sweep (default: <space name>-<time>)")
    sweep.set_defaults(func=_cmd_sweep)

    runs = sub.add_parser("runs", help="an experiment's runs from MLflow, best val_miou first")
    runs.add_argument("--experiment", required=True)
    runs.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    runs.set_defaults(func=_cmd_runs)

    demo = sub.add_parser("demo", help="the whole comparison on the synthetic demo data")
    demo.add_argument("--config", default="configs/demo.yaml")
    demo.add_argument("--data", help="a VOC-layout dataset root (default: the config's data.root, else demo_data); "
                                     "the synthetic demo set is written there only if it is absent or empty. "
                                     "Leave it out with a config that reads data.sources (COCO, SBD, ...)")
    _add_set(demo, "override config keys of every variant")
    demo.add_argument("--seeds", type=int, default=1,
                      help="train every row this many times (the config's seed and the next ones) and report "
                           "mean ± standard deviation: single runs differ by one to three points of val mIoU")
    demo.add_argument("--extra-boxes", action="store_true",
                      help="instead: masks on 1/6 of the images vs the same + COCO-format boxes on the rest")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "onnx_ir", "onnxscript"):  # the last two: each ONNX export pass
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
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
