"""Search spaces for ``boxsup sweep``: config keys mapped to Ray Tune distributions, checked up front.

A space file (YAML) names dotted config keys and one distribution each::

    params:
      assign.lam: {grid: [1.0, 3.0, 10.0]}         # every value, crossed with the other grids
      assign.k: {choice: [1, 5]}                    # one value per sample
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}     # [low, high]
      assign.warmup_epochs: {randint: [1, 5]}      # low inclusive, high exclusive
      train.momentum: {uniform: [0.8, 0.95]}       # float [low, high]
    num_samples: 1                                 # samples (of the whole grid, when there is one)
    max_concurrent_trials: 1
    resources_per_trial: {cpu: 1, gpu: 0}
    scheduler: {asha: {max_t: 30, grace_period: 5, reduction_factor: 2}}   # optional

Every trial is a whole training run. Each grid/choice value, and both ends of a range, must be a
value the config key accepts (boxsup.config's own checks); any mistake is a one-line ``BoxSupError``
naming the file and the key, before Ray starts.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from boxsup.config import DEFAULTS, flatten, read_yaml_mapping, retired_key_problem, set_key
from boxsup.errors import BoxSupError

METRIC, MODE, TIME_ATTR = "val_miou", "max", "epoch"  # what the training loop reports each epoch
TOP_LEVEL = ("params", "num_samples", "max_concurrent_trials", "resources_per_trial", "scheduler")
RESOURCES: dict[str, float] = {"cpu": 1.0, "gpu": 0.0}
ASHA_DEFAULTS: dict[str, Any] = {"max_t": 100, "grace_period": 1, "reduction_factor": 4, "brackets": 1}  # Ray's
DISCRETE: dict[str, Callable[..., Any]] = {"grid": tune.grid_search, "choice": tune.choice}
RANGES: dict[str, Callable[..., Any]] = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}


@dataclass
class SearchSpace:
    """A validated space: Tune ``param_space`` entries by dotted config key, and how to run the trials."""

    params: dict[str, Any]
    num_samples: int
    max_concurrent_trials: int
    resources: dict[str, float]
    scheduler: dict[str, Any] | None  # ASHA settings (max_t, grace_period, reduction_factor, brackets)
    specs: dict[str, Any]  # the distributions as the file writes them, e.g. {"assign.k": {"grid": [1, 5]}}

    def tune_scheduler(self) -> ASHAScheduler | None:
        """ASHA over epochs, or None when the space names no scheduler.

        Its metric (``METRIC``, ``MODE``) comes from the ``TuneConfig``, which also shows it in
        Tune's progress table.
        """
        if self.scheduler is None:
            return None
        return ASHAScheduler(time_attr=TIME_ATTR, **self.scheduler)


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; every problem is a one-line ``BoxSupError`` naming file and key."""
    path = Path(path)
    source = str(path)
    raw = read_yaml_mapping(path, "search space file", "space keys (params, num_samples, ...)")
    unknown = sorted(set(raw) - set(TOP_LEVEL), key=str)
    if unknown:
        raise BoxSupError(f"{source}: unknown key {unknown[0]!r}{_hint(str(unknown[0]), TOP_LEVEL)} (allowed: {', '.join(TOP_LEVEL)})")
    return SearchSpace(
        params=_params(source, raw.get("params")),
        num_samples=_positive_int(source, "num_samples", raw.get("num_samples", 1)),
        max_concurrent_trials=_positive_int(source, "max_concurrent_trials", raw.get("max_concurrent_trials", 1)),
        resources=_resources(source, raw.get("resources_per_trial", {})),
        scheduler=_scheduler(source, raw.get("scheduler")),
        specs=dict(raw["params"]),
    )


def apply_trial(cfg: dict[str, Any], trial_params: dict[str, Any], source: str = "sweep trial") -> dict[str, Any]:
    """A deep copy of the full config ``cfg`` with each dotted key of ``trial_params`` set and validated."""
    out = copy.deepcopy(cfg)
    for key, value in trial_params.items():
        _set_checked(out, key, value, source)
    return out


def _params(source: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not spec:
        raise BoxSupError(f"{source}: params: expected a mapping of dotted config keys to distributions, got {spec!r}")
    keys = flatten(DEFAULTS)
    for key in spec:
        if isinstance(DEFAULTS.get(key), dict):
            raise BoxSupError(f"{source}: params: {key!r} is a config section; name dotted keys, e.g. {next(iter(flatten(DEFAULTS[key], f'{key}.')))}")
        if (retired := retired_key_problem(str(key))) is not None:
            raise BoxSupError(f"{source}: params: {retired}")
        if key not in keys:
            raise BoxSupError(f"{source}: params: unknown config key {key!r}{_hint(str(key), keys)}")
    return {key: _distribution(source, key, dist) for key, dist in spec.items()}


def _distribution(source: str, key: str, spec: Any) -> Any:
    """``{name: args}`` -> the Tune object; every value the distribution can give is checked against ``key``."""
    names = (*DISCRETE, *RANGES)
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise BoxSupError(f"{source}: params.{key}: expected one distribution ({', '.join(names)}), e.g. {{grid: [...]}}, got {spec!r}")
    ((name, args),) = spec.items()
    if name in DISCRETE:
        return DISCRETE[name](_values(source, key, name, args))
    if name in RANGES:
        return RANGES[name](*_bounds(source, key, name, args))
    raise BoxSupError(f"{source}: params.{key}: unknown distribution {name!r}{_hint(str(name), names)} (one of {', '.join(names)})")


def _values(source: str, key: str, name: str, args: Any) -> list[Any]:
    """grid/choice arguments: a non-empty list of values the config key accepts (as the config stores them)."""
    if not isinstance(args, list) or not args:
        raise BoxSupError(f"{source}: params.{key}: {name} needs a non-empty list of values, got {args!r}")
    return [_accepted(source, key, value) for value in args]


def _bounds(source: str, key: str, name: str, args: Any) -> tuple[float, float]:
    """uniform/loguniform/randint arguments: [low, high], low < high, and the config key accepts both ends."""
    integer = name == "randint"
    kinds = "integers" if integer else "numbers"
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a, integer) for a in args)):
        raise BoxSupError(f"{source}: params.{key}: {name} needs [low, high] ({kinds}), got {args!r}{_yaml_float_hint(args)}")
    low, high = args
    if low >= high:
        raise BoxSupError(f"{source}: params.{key}: {name} needs low < high, got {args!r}")
    if name == "loguniform" and low <= 0:
        raise BoxSupError(f"{source}: params.{key}: loguniform needs low > 0, got {args!r}")
    for end in (low, high - 1) if integer else (float(low), float(high)):  # randint never gives high
        _accepted(source, key, end)
    return low, high


def _accepted(source: str, key: str, value: Any) -> Any:
    """``value`` as boxsup.config validates and stores it under ``key``."""
    scratch = copy.deepcopy(DEFAULTS)
    _set_checked(scratch, key, value, source)
    return flatten(scratch)[key]


def _set_checked(cfg: dict[str, Any], key: str, value: Any, source: str) -> None:
    """``set_key``, its every error starting with ``source`` (its type errors name only the key)."""
    try:
        set_key(cfg, key, value, source)
    except BoxSupError as exc:
        message = str(exc)
        message = message if message.startswith(source) else f"{source}: {message}"
        raise BoxSupError(f"{message}{_yaml_float_hint([value])}") from None


def _resources(source: str, spec: Any) -> dict[str, float]:
    if not isinstance(spec, dict):
        raise BoxSupError(f"{source}: resources_per_trial: expected a mapping like {{cpu: 1, gpu: 0}}, got {spec!r}")
    for key, value in spec.items():
        if key not in RESOURCES:
            raise BoxSupError(f"{source}: resources_per_trial: unknown resource {key!r} (one of {', '.join(RESOURCES)})")
        if not _is_number(value) or value < 0:
            raise BoxSupError(f"{source}: resources_per_trial.{key}: expected a number >= 0, got {value!r}")
    return {key: float(spec.get(key, default)) for key, default in RESOURCES.items()}


def _scheduler(source: str, spec: Any) -> dict[str, Any] | None:
    """None, or ``{asha: {settings}}`` -> the full ASHA settings (Ray's defaults for those not given)."""
    if spec is None:
        return None
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise BoxSupError(f"{source}: scheduler: expected {{asha: {{max_t: ..., grace_period: ...}}}}, got {spec!r}")
    ((name, settings),) = spec.items()
    if name != "asha":
        raise BoxSupError(f"{source}: scheduler: unknown scheduler {name!r} (supported: asha)")
    settings = settings or {}
    if not isinstance(settings, dict):
        raise BoxSupError(f"{source}: scheduler.asha: expected a mapping of settings, got {settings!r}")
    for key in settings:
        if key not in ASHA_DEFAULTS:
            raise BoxSupError(f"{source}: scheduler.asha: unknown setting {key!r} (one of {', '.join(ASHA_DEFAULTS)})")
    merged = ASHA_DEFAULTS | settings
    for key in ("max_t", "grace_period", "brackets"):
        _positive_int(source, f"scheduler.asha.{key}", merged[key])
    if not _is_number(merged["reduction_factor"]) or merged["reduction_factor"] <= 1:
        raise BoxSupError(f"{source}: scheduler.asha.reduction_factor: expected a number > 1, got {merged['reduction_factor']!r}")
    if merged["grace_period"] > merged["max_t"]:
        raise BoxSupError(f"{source}: scheduler.asha.grace_period: {merged['grace_period']} exceeds max_t {merged['max_t']}")
    return merged


def _positive_int(source: str, key: str, value: Any) -> int:
    if not _is_number(value, integer=True) or value <= 0:
        raise BoxSupError(f"{source}: {key}: expected a positive integer, got {value!r}")
    return value


def _is_number(value: Any, integer: bool = False) -> bool:
    return isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)


def _hint(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _yaml_float_hint(values: Any) -> str:
    """YAML reads 1e-4 (no dot) as a string; say so when that is the likely mistake."""
    strings = [v for v in values if isinstance(v, str)] if isinstance(values, list) else []
    if any(re.fullmatch(r"[-+]?[0-9.]+[eE][-+]?[0-9]+", v) for v in strings):
        return " (YAML reads 1e-4 as a string: write 1.0e-4)"
    return ""
