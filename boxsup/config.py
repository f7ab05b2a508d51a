"""Run configuration: defaults, YAML files, ``--set key=value`` overrides, validation.

A config is a nested dict. Every key a user may set exists in ``DEFAULTS``; an unknown key, a
value of the wrong type or one out of its range (``BOUNDS``, ``CHOICES``, ``VALUE_CHECKS``) is a
one-line ``BoxSupError`` naming the key, before anything runs.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from boxsup.assign.rule import LabelUpdateRule
from boxsup.errors import BoxSupError
from boxsup.evaluation.crf import CONFIG_KEY as CRF_KEY, RANGES as CRF_RANGES, CRFParams
from boxsup.utils.lists import first_duplicate, read_user_text
from boxsup.utils.numbers import FRACTION, NON_NEGATIVE, POSITIVE, Range, as_number, checked_number

# Paper defaults (Sec. 4.3, 5): batch 20, lr 1e-3 / 10 every 15 epochs, 45 epochs, lambda 3, k 5.
_RULE = LabelUpdateRule()

DEFAULTS: dict[str, Any] = {
    "seed": 0,  # fixes every random choice, the label draw included, whatever the number of workers or actors
    "data": {
        "root": None,  # a dataset in the VOC layout: the one-source shorthand of data.sources
        # a list of sources (name, format, root, split or list, or annotations and images, supervision, class_map,
        # prefix): docs/data.md. --set 'data.sources[0].root=PATH' changes one field of one source
        "sources": None,
        "val": None,  # with data.sources: the validation source (one mapping); --set data.val.split=S changes one field
        # auto: <root>/classes.txt (or the first source's) if present, else the categories of the first source's
        # COCO JSON (id order) when it is COCO, else the 20 VOC classes; voc; a list of names; a file of names
        "classes": "auto",
        "train_split": "train",  # with data.root: the training list, ImageSets/Segmentation/<name>.txt (else ImageSets/Main/)
        "val_split": "val",  # with data.root: the validation list, found the same way
        "supervision": "box",  # mask | box | semi (masks for data.mask_fraction or data.mask_list, boxes for the rest)
        "mask_fraction": 0.1,  # semi: fraction of training images that keep their masks
        "mask_list": None,  # semi: file of image ids that keep their masks (instead of the fraction)
        # images with masks treated as box-only, their masks only scoring each round's labels (pseudo_miou and the
        # label diagnostics in MLflow), in semi mode too
        "audit_fraction": 0.0,
        "audit_list": None,  # file of such image ids (instead of the fraction)
        "crop_size": 321,  # px: the square training crop (a smaller image is padded first)
    },
    "proposals": {
        "method": "ss",  # ss (Selective Search masks) | grabcut | rectangles | mcg (imported: boxsup proposals import)
        # path or URI, built on first use if missing. Default (null): one store per data and proposal settings,
        # <output.dir>/proposals/<dataset>-<hash>-<split>-<method>-<max_candidates>
        "store": None,
        "max_candidates": 1000,  # per image; also `boxsup proposals`'s default (the paper's setups state 2000)
        # px: proposals of a larger image are computed on a copy scaled to this longest side, then mapped back
        # (memory bounded; VOC's 500 px and COCO's 640 px images are untouched)
        "max_side": 640,
    },
    "assign": {  # the label-update rule's knobs default to LabelUpdateRule's (boxsup/assign/rule.py, the one home)
        "lam": _RULE.lam,
        "k": _RULE.k,
        "update": True,  # false: labels of round 0 stay fixed (the rectangles / GrabCut baselines)
        "pixel_cost": _RULE.pixel_cost,  # e(p, l) in E_r: error = 1 - P(l|p) (bounded), xent = -log P(l|p)
        "warmup_epochs": _RULE.first_network_round,  # epochs trained on round 0's labels (E_o alone) before the network is asked
        # paper: Sec. 4.3's update (E_r the two-region mean, no E_c, the plain k lowest of every candidate, lambda at
        # once, the last weights), whatever the keys from region_cost to void_k say; robust: as those keys say
        "form": _RULE.form,
        "region_cost": _RULE.region_cost,
        "consensus": _RULE.consensus,
        "consensus_margin": _RULE.consensus_margin,
        # draw among the k lowest costs only those within this of the lowest (null: all k)
        "sample_margin": None if math.isinf(_RULE.sample_margin) else _RULE.sample_margin,
        "greedy_round0": _RULE.greedy_round0,  # true: round 0 (no network yet) takes each box's lowest cost instead of drawing among k
        "greedy_after_lr_step": _RULE.greedy_from is not None,  # rounds from train.lr_step on take each box's lowest cost (no draw)
        "trust_margin": _RULE.trust_margin,
        "lam_ramp": _RULE.lam_ramp,  # rounds over which lambda grows linearly from the first network round (0: at once)
        "ema": _RULE.ema,  # the network scoring candidates: EMA of the weights over epochs with this decay (0: the last)
        "score_flip": _RULE.score_flip,
        # pixels of a box on which its void_k lowest-cost candidates (within sample_margin) disagree are painted void
        # (255) and do not train (0: none)
        "void_k": _RULE.void_k,
        "num_actors": 2,  # Ray actors sharing the label update (each owns a shard of the proposal store)
        "actor_cpus": 1.0,  # CPUs each of those actors asks Ray for
        # MiB of box-refined candidate pools each actor keeps (once full, new ones are used, not kept; about 0.2-0.3
        # MiB per VOC-sized pool); logged per round as assign_cache_mb, summed over actors
        "cache_mb": 2048.0,
    },
    "model": {
        # vgg16_largefov (the paper's DeepLab-LargeFOV), deeplabv3_resnet50/101, deeplabv3_mobilenet_v3_large,
        # lraspp_mobilenet_v3_large (for CPUs), small (a fast CPU FCN for demos and tests); which when: docs/models.md
        "backbone": "vgg16_largefov",
        # imagenet: the backbone's ImageNet weights through torchvision's weights API (the head starts fresh; not
        # for small); none; or a local file: the backbone's ImageNet state dict in torchvision's layout, or this
        # model's own state dict or checkpoint
        "weights": "imagenet",
        # null: the backbone's own (8; 16 for the MobileNetV3 ones, 4 for small); 8 or 16 for the deeplabv3_resnet
        # backbones (16 is about 3x faster, a little coarser)
        "output_stride": None,
    },
    "train": {
        "epochs": 45,  # the paper's schedule: 45 epochs, lr divided by 10 every 15
        "batch_size": 20,  # the global batch, split over the Ray Train workers
        "lr": 1e-3,  # SGD's learning rate of the backbone; the new layers learn at 10x, biases at 2x their layer's
        "lr_step": 15,  # epochs between learning-rate steps
        "lr_gamma": 0.1,  # the learning rate's factor at each step
        "momentum": 0.9,  # SGD's momentum
        "weight_decay": 5e-4,  # SGD's weight decay
        "device": "auto",  # auto | cpu | cuda
        "num_threads": 0,  # torch CPU threads; 0 keeps torch's default
        # DataLoader processes per Train worker, for training and for the label round's decoding and atom-map
        # splitting; null: 4 on a GPU, 0 (in-process) on CPU
        "loader_workers": None,
        "label_cache_mb": 1024,  # split atom maps a worker keeps across label rounds (375 KB per VOC image)
        # the network's arithmetic: auto is bf16 on a GPU that has it (Ampere and later), fp16 with a gradient scaler
        # on an older one, fp32 on a CPU; or bf16 | fp16 | fp32. Losses, costs and reductions stay float32
        "precision": "auto",
        "compile": False,  # torch.compile the network (the first epoch pays for the compilation)
        # CUDA: deterministic kernels, so a run and its recovery from a checkpoint are bitwise equal (slower;
        # vgg16_largefov and small only). A CPU run is bitwise repeatable without it
        "deterministic": False,
    },
    "eval": {
        "crf": False,  # the val score during training: dense CRF on the network's output
        # The dense CRF's kernels (bi_w, bi_xy_std, bi_rgb_std, pos_w, pos_xy_std, iterations): DeepLab-LargeFOV's
        # VOC values, which CRFParams (boxsup/evaluation/crf.py) owns with their ranges and meanings.
        "crf_params": CRFParams().settings(),
        "scales": [1.0],  # test scales (the network's probabilities averaged over them)
        "every": 1,  # evaluate on val every N epochs (and always after the last)
    },
    "tracking": {
        "uri": None,  # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db (a file in the working dir)
        "experiment": "boxsup",  # the MLflow experiment of the run
        "run_name": None,  # the MLflow run's name and the run directory's (null: the start time, YYYYmmdd-HHMMSS)
    },
    "ray": {
        "num_workers": 2,  # Ray Train workers (data-parallel); 0 runs everything in this process
        "use_gpu": False,  # one GPU per Ray Train worker
        "cpus_per_worker": 1.0,  # CPUs each Ray Train worker asks Ray for
        "address": None,  # "auto" joins a running cluster; null starts a local Ray
        "max_failures": 2,  # Train worker failures recovered from the last checkpoint
    },
    "output": {
        "dir": "runs",  # run directories and default proposal stores: a path or a URI (s3://bucket/runs, docs/storage.md)
        # label rounds kept in the run's label store: null keeps the last round and the three the label-evolution
        # figure shows (older ones deleted once the next checkpoint is saved, so --resume still works); N keeps
        # the last N too; all keeps every round
        "keep_label_rounds": None,
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.supervision": ("mask", "box", "semi"),
    "proposals.method": ("ss", "grabcut", "rectangles", "mcg"),
    "assign.pixel_cost": ("error", "xent"),
    "assign.region_cost": ("mean", "iou"),
    "assign.form": ("robust", "paper"),
    "model.backbone": ("vgg16_largefov", "small", "deeplabv3_resnet50", "deeplabv3_resnet101",
                       "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"),  # boxsup.models.BACKBONES
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),  # boxsup.models.precision.PRECISIONS
}

# Keys that accept null, and (when their default is None) these types.
NULLABLE_TYPES: dict[str, tuple[type, ...]] = {
    "data.root": (str,),
    "data.sources": (list,),
    "data.val": (dict,),
    "data.mask_list": (str,),
    "data.audit_list": (str,),
    "assign.sample_margin": (float, int),
    "proposals.store": (str,),
    "tracking.run_name": (str,),
    "tracking.uri": (str,),
    "ray.address": (str,),
    "train.loader_workers": (int,),
    "model.output_stride": (int,),
    "output.keep_label_rounds": (int, str),
}


# Numeric keys (and every value of a list key) must lie in these ranges.
BOUNDS: dict[str, Range] = {
    **dict.fromkeys(("assign.num_actors", "assign.actor_cpus", "ray.cpus_per_worker",
                     "assign.warmup_epochs", "train.epochs", "train.batch_size", "train.lr", "train.lr_step",
                     "assign.k", "data.crop_size", "proposals.max_candidates", "eval.every", "eval.scales"), POSITIVE),
    **{f"{CRF_KEY}.{name}": bounds for name, bounds in CRF_RANGES.items()},  # CRFParams's own
    **dict.fromkeys(("seed", "assign.lam", "train.weight_decay", "train.num_threads", "train.loader_workers",
                     "train.label_cache_mb", "ray.num_workers", "ray.max_failures"), NON_NEGATIVE),
    "train.momentum": Range(0, 1, high_open=True),
    "assign.ema": Range(0, 1, high_open=True),
    "assign.cache_mb": NON_NEGATIVE,
    "assign.trust_margin": FRACTION,
    "assign.lam_ramp": NON_NEGATIVE,
    "assign.void_k": NON_NEGATIVE,
    "assign.sample_margin": NON_NEGATIVE,
    "assign.consensus": NON_NEGATIVE,
    "assign.consensus_margin": FRACTION,
    "train.lr_gamma": Range(0, 1, low_open=True),
    "data.mask_fraction": FRACTION,
    "data.audit_fraction": FRACTION,
    "proposals.max_side": Range(32),  # pixels; smaller copies leave too few superpixels
}  # fmt: skip

# Keys that no longer exist: setting one is an error that says what replaced it, never silently ignored.
RETIRED_KEYS = {
    "train.amp": "replaced by train.precision (auto | bf16 | fp16 | fp32): amp true is auto, false is fp32",
    "assign.cache_images": "replaced by assign.cache_mb (the pool cache is bounded in MiB, not in images; "
                           "a VOC-sized pool takes about 0.2-0.3 MiB)",
}


def retired_key_problem(key: str) -> str | None:
    """Why ``key`` can no longer be set, or None."""
    return f"config key {key} was removed: {RETIRED_KEYS[key]}" if key in RETIRED_KEYS else None


# MLflow tracking stores by URI scheme; a database scheme may name its driver (postgresql+psycopg2://).
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "databricks", "postgresql", "mysql", "mssql")


# Keys whose value is itself a mapping (checked as a whole by boxsup.data.sources), not a section.
MAPPING_KEYS = ("data.val",)

# With data.sources, each source carries these itself; setting them too is refused, not ignored.
SHORTHAND_KEYS = ("data.root", "data.train_split", "data.val_split", "data.supervision", "data.mask_fraction",
                  "data.mask_list")


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in MAPPING_KEYS:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _check_type(key: str, value: Any, default: Any) -> Any:
    if value is None and key in NULLABLE_TYPES:
        return None
    if default is None:
        allowed = NULLABLE_TYPES.get(key, (str,))
        if value is None or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)):
            return value
        raise BoxSupError(f"config key {key}: expected {allowed[0].__name__} or null, got {value!r}")
    if key == "data.classes":
        if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            return value
        raise BoxSupError(f"config key data.classes: expected 'auto', 'voc', a file path or a list of names, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, (float, int)):
        return checked_number(key, value, default)
    elif isinstance(default, list):
        numbers = [as_number(v) for v in value] if isinstance(value, list) else [None]
        if None not in numbers:
            return numbers
        raise BoxSupError(f"config key {key}: expected a list of finite floats, got {value!r}")
    elif isinstance(value, type(default)):
        return value
    raise BoxSupError(f"config key {key}: expected {type(default).__name__}, got {value!r}")


def _tracking_uri_problem(uri: str | None) -> str | None:
    """null or an MLflow store: sqlite:///FILE, file:DIR, http(s)://HOST, databricks, postgresql://, mysql://, mssql://"""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if uri else None
    if uri is None or (scheme in TRACKING_SCHEMES and (":" in uri or uri == "databricks")):
        return None
    return (f"{uri!r} is not an MLflow store URI; use sqlite:///FILE, file:DIR, http(s)://HOST, databricks, "
            "postgresql://, mysql:// or mssql://")


def _classes_problem(spec: str | list[str]) -> str | None:
    """auto, voc, a file of names, or a list of names with none twice"""
    twice = first_duplicate(spec) if isinstance(spec, list) else None
    return f"class {twice!r} is listed twice" if twice is not None else None


def _keep_rounds_problem(value: int | str | None) -> str | None:
    """null, a number of rounds >= 1, or all"""
    if value is None or value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return f"expected null, a number of rounds >= 1, or all; got {value!r}"


def _output_stride_problem(value: int | None) -> str | None:
    """null, 8 or 16 (a stride the backbone does not run at is refused before the run)"""
    # Which backbone runs at which stride is boxsup.models' to say (checked before a run starts).
    return None if value in (None, 8, 16) else f"expected null, 8 or 16; got {value!r}"


def _empty_list_problem(values: list[float]) -> str | None:
    """at least one value"""
    return "needs at least one value" if not values else None


# Checks beyond type, choice and range: key -> function giving the problem with a value, or None. Each function's
# docstring says what the key accepts (docs/config.md shows it).
VALUE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "tracking.uri": _tracking_uri_problem,
    "data.classes": _classes_problem,
    "eval.scales": _empty_list_problem,
    "output.keep_label_rounds": _keep_rounds_problem,
    "model.output_stride": _output_stride_problem,
}


def _value_problem(key: str, value: Any) -> str | None:
    """What is wrong with a well-typed ``value`` for ``key`` (choices, ranges, key-specific checks), or None."""
    if key in CHOICES and value not in CHOICES[key]:
        return f"{value!r} is not one of {', '.join(CHOICES[key])}"
    if key in VALUE_CHECKS and (problem := VALUE_CHECKS[key](value)) is not None:
        return problem
    bounds = BOUNDS.get(key) if value is not None else None
    outside = [v for v in (value if isinstance(value, list) else [value]) if v not in bounds] if bounds else []
    return f"{bounds.describe()}, got {outside[0]!r}" if bounds and outside else None


def set_key(cfg: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set one dotted key of ``cfg`` after checking it exists and the value fits; ``source`` names the origin."""
    defaults = flatten(DEFAULTS)
    indexed = re.fullmatch(r"data\.sources\[(\d+)\]\.(\w+)", dotted)
    if indexed is not None:  # one field of one source, e.g. --set data.sources[0].root=/mnt/data/VOC2012
        sources, index = cfg["data"].get("sources"), int(indexed.group(1))
        if not isinstance(sources, list) or index >= len(sources) or not isinstance(sources[index], dict):
            raise BoxSupError(f"{source}: config key data.sources has no source {index}")
        sources[index][indexed.group(2)] = value
        return
    parent = next((k for k in MAPPING_KEYS if dotted.startswith(k + ".")), None)
    if parent is not None:  # one field of a mapping value, e.g. --set data.val.split=test
        section, name = parent.split(".")
        if cfg[section].get(name) is None:
            cfg[section][name] = {}
        cfg[section][name][dotted[len(parent) + 1:]] = value
        return
    if (retired := retired_key_problem(dotted)) is not None:
        raise BoxSupError(f"{source}: {retired}")
    if dotted not in defaults:
        close = [k for k in defaults if k.split(".")[-1] == dotted.split(".")[-1]]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise BoxSupError(f"{source}: unknown config key {dotted!r}{hint}")
    try:
        value = _check_type(dotted, value, defaults[dotted])
    except BoxSupError as exc:
        raise BoxSupError(f"{source}: {exc}") from None
    problem = _value_problem(dotted, value)
    if problem is not None:
        raise BoxSupError(f"{source}: config key {dotted}: {problem}")
    node = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=0.01' -> ('train.lr', 0.01); the value is read as YAML."""
    if "=" not in text:
        raise BoxSupError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        raise BoxSupError(f"--set {text!r}: value is not valid YAML") from None


def read_yaml_mapping(path: str | Path, what: str, holds: str) -> dict[Any, Any]:
    """A YAML file whose top level is a mapping; one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise BoxSupError(f"{path}: {what} not found")
    try:
        loaded = yaml.safe_load(read_user_text(path, what)) or {}
    except yaml.YAMLError as exc:
        raise BoxSupError(f"{path}: not valid YAML {yaml_problem(exc)}") from None
    if not isinstance(loaded, dict):
        raise BoxSupError(f"{path}: top level must be a mapping of {holds}")
    return loaded


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what a YAML error is, in one line: ``at line L, column C: problem (context)``."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"({str(exc).splitlines()[0]})"
    mark = exc.problem_mark
    context = ""
    if exc.context:
        started = exc.context_mark
        at = f" at line {started.line + 1}, column {started.column + 1}" if started is not None else ""
        context = f" ({exc.context}{at})"
    return f"at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file, then ``--set`` overrides; every key and value validated."""
    cfg = copy.deepcopy(DEFAULTS)
    given: dict[str, str] = {}  # key -> where it was set
    if path is not None:
        loaded = read_yaml_mapping(path, "config file", "config keys")
        for key, value in flatten(loaded).items():
            set_key(cfg, key, value, str(path))
            given[key] = str(path)
    for text in overrides or []:
        key, value = parse_override(text)
        set_key(cfg, key, value, f"--set {text}")
        given[key] = f"--set {text}"
    check_data_section(cfg, given)
    return cfg


def crf_settings(saved: dict[str, Any] | None, overrides: list[str], source: str) -> dict[str, Any]:
    """The ``eval.crf_params`` that ``boxsup eval`` uses: the defaults, then those of a checkpoint's saved
    config ``saved`` (``source`` names it; an older one without them keeps the defaults), then ``--set``
    overrides, which may name only ``eval.crf_params.*`` keys. Every value validated."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["eval"]["crf_params"] = CRFParams.of_config(saved, source).settings()  # CRFParams checks the saved values
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("eval.crf_params."):
            raise BoxSupError(f"--set {text}: boxsup eval takes only eval.crf_params.* keys (the rest are its flags)")
        set_key(cfg, key, value, f"--set {text}")
    return cfg["eval"]["crf_params"]


def check_data_section(cfg: dict[str, Any], given: dict[str, str]) -> None:
    """``data.root`` or ``data.sources`` (never both, nor a shorthand key beside sources); the sources checked."""
    from boxsup.data.sources import source_specs

    data = cfg["data"]
    if data["sources"] is None:
        if data["root"] is None:
            raise BoxSupError("config key data.root: not set (give the dataset directory, VOC layout, or data.sources)")
        if data["val"] is not None:
            raise BoxSupError(f"{given.get('data.val', 'config')}: config key data.val needs data.sources "
                              "(with data.root the validation split is data.val_split)")
        return
    for key in SHORTHAND_KEYS:
        if key in given and (key != "data.root" or data["root"] is not None):
            raise BoxSupError(f"{given[key]}: config key {key}: not used with data.sources (each source sets its "
                              "own root, split and supervision); remove it")
    source_specs(data)  # every source mapping checked here, before anything runs
