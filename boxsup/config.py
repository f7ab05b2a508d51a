"""Run configuration: defaults, YAML files, ``--set key=value`` overrides, validation.

A config is a nested dict. Every key a user may set exists in ``DEFAULTS``; an unknown key or a
value of the wrong type is a one-line ``BoxSupError`` naming the key, before anything runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from boxsup.errors import BoxSupError

# Paper defaults (Sec. 4.3, 5): batch 20, lr 1e-3 / 10 every 15 epochs, 45 epochs, lambda 3, k 5.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "root": None,  # a dataset in the VOC layout
        "classes": "auto",  # auto: <root>/classes.txt if present, else the 20 VOC classes; voc; a list; a file
        "train_split": "train",
        "val_split": "val",
        "supervision": "box",  # mask | box | semi
        "mask_fraction": 0.1,  # semi: fraction of training images that keep their masks
        "mask_list": None,  # semi: file of image ids that keep their masks (instead of the fraction)
        "crop_size": 321,
    },
    "proposals": {
        "method": "ss",  # ss | grabcut | rectangles
        "store": None,  # default: <output.dir>/proposals/<dataset>-<split>-<method>
        "max_candidates": 2000,
    },
    "assign": {
        "lam": 3.0,
        "k": 5,
        "update": True,  # false: labels of round 0 stay fixed (the rectangles / GrabCut baselines)
        "pixel_cost": "error",  # e(p, l) in E_r: error = 1 - P(l|p) (bounded), xent = -log P(l|p)
        "warmup_epochs": 1,  # epochs trained on round 0's labels (E_o alone) before the network is asked
        "num_actors": 2,  # Ray actors sharing the label update (each owns a shard of the proposal store)
        "actor_cpus": 1.0,
        "cache_images": 4096,  # box-refined candidate pools each actor keeps in memory
    },
    "model": {
        "backbone": "vgg16_largefov",  # vgg16_largefov | small
        "weights": "imagenet",  # imagenet | none | path to a local state dict
    },
    "train": {
        "epochs": 45,
        "batch_size": 20,
        "lr": 1e-3,
        "lr_step": 15,
        "lr_gamma": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "device": "auto",  # auto | cpu | cuda
        "num_threads": 0,  # torch CPU threads; 0 keeps torch's default
        "loader_workers": 0,
        "amp": True,  # mixed precision on CUDA (ignored on CPU)
    },
    "eval": {
        "crf": False,
        "scales": [1.0],
        "every": 1,  # evaluate on val every N epochs (and always after the last)
    },
    "tracking": {
        "uri": None,  # null: $MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db (a file in the working dir)
        "experiment": "boxsup",
        "run_name": None,
    },
    "ray": {
        "num_workers": 2,  # Ray Train workers (data-parallel); 0 runs everything in this process
        "use_gpu": False,
        "cpus_per_worker": 1.0,
        "address": None,  # "auto" joins a running cluster; null starts a local Ray
        "max_failures": 2,  # Train worker failures recovered from the last checkpoint
    },
    "output": {
        "dir": "runs",
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.supervision": ("mask", "box", "semi"),
    "proposals.method": ("ss", "grabcut", "rectangles"),
    "assign.pixel_cost": ("error", "xent"),
    "model.backbone": ("vgg16_largefov", "small"),
    "train.device": ("auto", "cpu", "cuda"),
}

# Keys whose default is None accept these types.
NULLABLE_TYPES: dict[str, tuple[type, ...]] = {
    "data.root": (str,),
    "data.mask_list": (str,),
    "proposals.store": (str,),
    "tracking.run_name": (str,),
    "tracking.uri": (str,),
    "ray.address": (str,),
}

POSITIVE = ("assign.num_actors", "assign.actor_cpus", "assign.cache_images", "ray.cpus_per_worker", "assign.warmup_epochs", "train.epochs", "train.batch_size", "train.lr", "train.lr_step", "assign.k", "data.crop_size",
            "proposals.max_candidates", "eval.every")  # fmt: skip


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _check_type(key: str, value: Any, default: Any) -> Any:
    if default is None:
        allowed = NULLABLE_TYPES.get(key, (str,))
        if value is None or isinstance(value, allowed):
            return value
        raise BoxSupError(f"config key {key}: expected {allowed[0].__name__} or null, got {value!r}")
    if key == "data.classes":
        if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            return value
        raise BoxSupError(f"config key data.classes: expected 'auto', 'voc', a file path or a list of names, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, list):
        if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            return [float(v) for v in value]
    elif isinstance(value, type(default)):
        return value
    raise BoxSupError(f"config key {key}: expected {type(default).__name__}, got {value!r}")


def set_key(cfg: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set one dotted key of ``cfg`` after checking it exists and the value fits; ``source`` names the origin."""
    defaults = flatten(DEFAULTS)
    if dotted not in defaults:
        close = [k for k in defaults if k.split(".")[-1] == dotted.split(".")[-1]]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise BoxSupError(f"{source}: unknown config key {dotted!r}{hint}")
    try:
        value = _check_type(dotted, value, defaults[dotted])
    except BoxSupError as exc:
        raise BoxSupError(f"{source}: {exc}") from None
    if dotted in CHOICES and value not in CHOICES[dotted]:
        raise BoxSupError(f"{source}: config key {dotted}: {value!r} is not one of {', '.join(CHOICES[dotted])}")
    if dotted in POSITIVE and value <= 0:
        raise BoxSupError(f"{source}: config key {dotted}: must be > 0, got {value!r}")
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
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BoxSupError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise BoxSupError(f"{path}: top level must be a mapping of {holds}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file, then ``--set`` overrides; every key and value validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        loaded = read_yaml_mapping(path, "config file", "config keys")
        for key, value in flatten(loaded).items():
            set_key(cfg, key, value, str(path))
    for text in overrides or []:
        key, value = parse_override(text)
        set_key(cfg, key, value, f"--set {text}")
    if cfg["data"]["root"] is None:
        raise BoxSupError("config key data.root: not set (give the dataset directory, VOC layout)")
    return cfg


def resolve_classes(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The class names of ``data.classes``: 'auto', 'voc', a list, or a file (relative paths: to data.root).

    'auto' reads ``<data.root>/classes.txt`` (one name per line, in label-id order) when the dataset
    has one, and takes the 20 PASCAL VOC classes otherwise.
    """
    from boxsup.data.voc import VOC_CLASSES

    spec = cfg["data"]["classes"]
    if isinstance(spec, list):
        return tuple(spec)
    if spec == "auto":
        spec = "classes.txt" if (Path(cfg["data"]["root"]) / "classes.txt").is_file() else "voc"
    if spec == "voc":
        return VOC_CLASSES
    path = Path(spec)
    if not path.is_absolute() and not path.is_file():
        path = Path(cfg["data"]["root"]) / spec
    if not path.is_file():
        raise BoxSupError(f"config key data.classes: {spec!r} is neither 'auto', 'voc' nor an existing file")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise BoxSupError(f"{path}: class list is empty")
    return names
