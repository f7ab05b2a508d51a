"""Sweep search spaces: distributions -> Tune objects, trial configs, and one-line errors before Ray starts."""

import copy
from pathlib import Path

import pytest
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

from boxsup.config import DEFAULTS
from boxsup.errors import BoxSupError
from boxsup.platform.search_space import apply_trial, load_search_space

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(BoxSupError) as info:
        load_search_space(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_every_distribution(tmp_path):
    space = load_search_space(write(tmp_path, """
params:
  assign.lam: {grid: [1, 3.0, 10]}
  assign.k: {choice: [1, 5]}
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
  assign.warmup_epochs: {randint: [1, 5]}
  train.momentum: {uniform: [0.8, 0.95]}
num_samples: 3
max_concurrent_trials: 2
resources_per_trial: {cpu: 2, gpu: 0.5}
"""))
    p = space.params
    assert p["assign.lam"] == {"grid_search": [1.0, 3.0, 10.0]}  # stored as the config stores them
    assert isinstance(p["assign.k"], Categorical) and p["assign.k"].categories == [1, 5]
    assert isinstance(p["train.lr"], Float) and isinstance(p["train.lr"].get_sampler(), LogUniform)
    assert (p["train.lr"].lower, p["train.lr"].upper) == (1e-4, 1e-2)
    assert isinstance(p["assign.warmup_epochs"], Integer) and (p["assign.warmup_epochs"].lower, p["assign.warmup_epochs"].upper) == (1, 5)
    assert isinstance(p["train.momentum"].get_sampler(), Uniform) and p["train.momentum"].upper == 0.95
    assert (space.num_samples, space.max_concurrent_trials, space.resources) == (3, 2, {"cpu": 2.0, "gpu": 0.5})
    assert space.scheduler is None and space.tune_scheduler() is None


def test_defaults_and_list_values(tmp_path):
    space = load_search_space(write(tmp_path, "params:\n  eval.scales: {grid: [[1], [0.75, 1, 1.25]]}\n"))
    assert space.params["eval.scales"] == {"grid_search": [[1.0], [0.75, 1.0, 1.25]]}
    assert (space.num_samples, space.max_concurrent_trials, space.resources) == (1, 1, {"cpu": 1.0, "gpu": 0.0})


def test_asha_scheduler(tmp_path):
    space = load_search_space(write(tmp_path, "params: {assign.k: {grid: [1, 5]}}\n"
                                              "scheduler: {asha: {max_t: 30, grace_period: 5, reduction_factor: 2}}\n"))
    scheduler = space.tune_scheduler()
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._time_attr == "epoch"
    assert scheduler.set_search_properties("val_miou", "max")  # the sweep's TuneConfig sets them
    assert (scheduler._max_t, scheduler._reduction_factor, len(scheduler._brackets)) == (30, 2, 1)
    assert [milestone for milestone, _ in scheduler._brackets[0]._rungs] == [20, 10, 5]  # grace period 5


def test_apply_trial_sets_and_validates():
    cfg = copy.deepcopy(DEFAULTS)
    out = apply_trial(cfg, {"assign.lam": 10, "proposals.method": "grabcut", "train.lr": 0.01})
    assert (out["assign"]["lam"], out["proposals"]["method"], out["train"]["lr"]) == (10.0, "grabcut", 0.01)
    assert cfg == DEFAULTS  # the input is left alone
    with pytest.raises(BoxSupError, match="^sweep trial: config key assign.k: must be > 0"):
        apply_trial(cfg, {"assign.k": 0})
    with pytest.raises(BoxSupError, match="^sweep trial: config key assign.k: expected int"):
        apply_trial(cfg, {"assign.k": 2.5})
    with pytest.raises(BoxSupError, match="assign.kk"):
        apply_trial(cfg, {"assign.kk": 5})


@pytest.mark.parametrize("text, expected", [
    ("params: {assign.kk: {grid: [1]}}", "unknown config key 'assign.kk' (did you mean assign.k?)"),
    ("params: {assign: {lam: {grid: [1]}}}", "'assign' is a config section"),
    ("params: {assign.k: {normal: [1, 2]}}", "params.assign.k: unknown distribution 'normal'"),
    ("params: {assign.k: [1, 5]}", "params.assign.k: expected one distribution"),
    ("params: {assign.k: {grid: [1], choice: [2]}}", "params.assign.k: expected one distribution"),
    ("params: {assign.k: {grid: []}}", "params.assign.k: grid needs a non-empty list"),
    ("params: {assign.k: {choice: 5}}", "params.assign.k: choice needs a non-empty list"),
    ("params: {train.lr: {uniform: [0.1]}}", "params.train.lr: uniform needs [low, high]"),
    ("params: {train.lr: {uniform: [0.1, 0.01]}}", "params.train.lr: uniform needs low < high"),
    ("params: {train.lr: {loguniform: [1e-4, 1.0e-2]}}", "write 1.0e-4"),
    ("params: {assign.lam: {loguniform: [0, 10]}}", "params.assign.lam: loguniform needs low > 0"),
    ("params: {assign.k: {randint: [1.5, 4]}}", "params.assign.k: randint needs [low, high] (integers)"),
    ("params: {assign.k: {grid: [0, 5]}}", "config key assign.k: must be > 0, got 0"),
    ("params: {assign.k: {choice: [1, five]}}", "config key assign.k: expected int, got 'five'"),
    ("params: {proposals.method: {grid: [ss, mcgg]}}", "config key proposals.method: 'mcgg' is not one of"),
    ("params: {assign.k: {uniform: [1, 10]}}", "config key assign.k: expected int, got 1.0"),  # uniform gives floats
    ("params: {assign.k: {randint: [0, 5]}}", "config key assign.k: must be > 0, got 0"),
    ("params: {train.lr: {uniform: [-1, 1]}}", "config key train.lr: must be > 0"),
    ("params: {assign.update: {randint: [0, 2]}}", "config key assign.update: expected bool"),
    ("params: {assign.k: {grid: [1]}}\nnum_sample: 2", "unknown key 'num_sample' (did you mean num_samples?)"),
    ("params: {assign.k: {grid: [1]}}\nnum_samples: 0", "num_samples: expected a positive integer"),
    ("params: {assign.k: {grid: [1]}}\nmax_concurrent_trials: 1.5", "max_concurrent_trials: expected a positive integer"),
    ("params: {assign.k: {grid: [1]}}\nresources_per_trial: {cpu: -1}", "resources_per_trial.cpu: expected a number >= 0"),
    ("params: {assign.k: {grid: [1]}}\nresources_per_trial: {tpu: 1}", "resources_per_trial: unknown resource 'tpu'"),
    ("params: {assign.k: {grid: [1]}}\nresources_per_trial: 2", "resources_per_trial: expected a mapping"),
    ("params: {assign.k: {grid: [1]}}\nscheduler: {pbt: {}}", "scheduler: unknown scheduler 'pbt'"),
    ("params: {assign.k: {grid: [1]}}\nscheduler: {asha: {patience: 3}}", "scheduler.asha: unknown setting 'patience'"),
    ("params: {assign.k: {grid: [1]}}\nscheduler: {asha: {reduction_factor: 1}}", "scheduler.asha.reduction_factor"),
    ("params: {assign.k: {grid: [1]}}\nscheduler: {asha: {max_t: 5, grace_period: 10}}", "grace_period: 10 exceeds max_t 5"),
    ("num_samples: 2", "params: expected a mapping"),
    ("- assign.k", "top level must be a mapping"),
    ("params: {assign.k: {grid: [1]\n", "not valid YAML"),
])
def test_errors_name_file_and_key(tmp_path, text, expected):
    assert expected in error(tmp_path, text)


def test_missing_file(tmp_path):
    with pytest.raises(BoxSupError, match="search space file not found"):
        load_search_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_load(path):
    space = load_search_space(path)
    assert space.params and space.resources["cpu"] > 0


def test_shipped_spaces_exist():
    assert {p.name for p in SPACES} >= {"lambda_k.yaml", "proposals.yaml", "supervision.yaml", "demo.yaml"}


def test_tune_expands_a_shipped_grid_into_valid_configs():
    from ray.tune.search.variant_generator import generate_variants

    space = load_search_space(SPACES[0].parent / "lambda_k.yaml")
    trials = [params for _, params in generate_variants(space.params)]
    assert len(trials) == 9
    configs = [apply_trial(DEFAULTS, params) for params in trials]
    assert {(c["assign"]["lam"], c["assign"]["k"]) for c in configs} == {(lam, k) for lam in (1.0, 3.0, 10.0) for k in (1, 5, 10)}
