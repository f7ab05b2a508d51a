"""``boxsup sweep``: a Ray Tune sweep in which every trial is a whole BoxSup run.

Each trial is a Tune function trainable that holds the space's ``resources_per_trial`` and runs
``run_boxsup``: its own Ray Train run (workers asking Ray for their own CPUs/GPUs) and its own
assignment-actor pool. Rank 0's per-epoch reports reach Tune (``TuneReportCallback``), so an ASHA
scheduler can stop weak trials on ``val_miou``.

MLflow: one experiment per sweep. A parent run holds the space, the base config and, at the end,
the best trial; every trial is a child run (``mlflow.parentRunId``) with everything ``boxsup
train`` logs. Proposal stores are built once, before any trial starts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from boxsup.data.sources import build_training_set
from boxsup.errors import BoxSupError
from boxsup.platform.launch import absolute_paths, ensure_proposals
from boxsup.platform.ray_train import init_ray, run_cpus
from boxsup.platform.runs_table import SWEEP_ROLE_TAG, SWEPT_KEYS_TAG, RunRow, experiment_runs
from boxsup.platform.search_space import METRIC, MODE, SearchSpace, apply_trial, load_search_space
from boxsup.platform.tracking import RunLogger, check_tracking_store, create_run, experiment_id, tracking_uri
from boxsup.utils.storage import check_output_location, join, open_location

log = logging.getLogger(__name__)

TRIAL_TAG = "boxsup.trial"  # the Tune trial name, on each trial's run


@dataclass
class SweepResult:
    experiment: str
    tracking_uri: str
    parent_run_id: str
    swept: list[str]  # the config keys the space varies
    trials: list[RunRow]  # best first
    errors: list[str]  # one line per trial that failed before or while running


def default_experiment_name(space_path: str | Path) -> str:
    return f"{Path(space_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def possible_values(space: SearchSpace, key: str, cfg: dict[str, Any]) -> list[Any]:
    """Every value ``key`` can take in this sweep: its grid/choice values, else the config's."""
    dist = space.params.get(key)
    if dist is None:
        section, name = key.split(".")
        return [cfg[section][name]]
    if isinstance(dist, dict) and "grid_search" in dist:
        return list(dist["grid_search"])
    return list(dist.categories)  # tune.choice; string-valued keys accept nothing else


def check_against_config(space: SearchSpace, cfg: dict[str, Any], source: str) -> None:
    """Mistakes only the pair (space, config) shows, found before Ray starts."""
    if "proposals.method" in space.params and cfg["proposals"]["store"]:
        raise BoxSupError(f"{source}: the space sweeps proposals.method but the config fixes proposals.store "
                          f"({cfg['proposals']['store']}); unset proposals.store so each method gets its own store")
    if space.scheduler and "train.epochs" not in space.params and space.scheduler["max_t"] > cfg["train"]["epochs"]:
        raise BoxSupError(f"{source}: scheduler.asha.max_t {space.scheduler['max_t']} exceeds train.epochs "
                          f"{cfg['train']['epochs']}; ASHA's rungs past the last epoch would never be reached")


def prebuild_proposals(space: SearchSpace, cfg: dict[str, Any], progress: bool) -> dict[str, str]:
    """Build every proposal store the sweep's trials can need, once; returns method -> store.

    As Ray tasks when the runs use Ray (``ray.num_workers`` > 0), else in this process.
    """
    if set(possible_values(space, "data.supervision", cfg)) == {"mask"}:
        return {}
    dataset = build_training_set(cfg)
    stores = {}
    for method in possible_values(space, "proposals.method", cfg):
        method_cfg = apply_trial(cfg, {"proposals.method": method})
        stores[method] = str(ensure_proposals(method_cfg, dataset, progress).root)
    return stores


def search_algorithm(space: SearchSpace, seed: int) -> Any:
    """Tune's grid/random variant generator, its random draws fixed by the config's seed."""
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=space.max_concurrent_trials, random_state=seed)


def trial_name(trial: Any) -> str:
    """``00003_k=5_lam=3`` : the trial's index and its swept values (also its MLflow run name)."""
    def short(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    values = "_".join(f"{key.split('.')[-1]}={short(value)}" for key, value in sorted(trial.config.items()))
    return f"{trial.trial_id.split('_')[-1]}_{values}"


def run_trial(params: dict[str, Any], base: dict[str, Any], experiment: str, parent_run_id: str,
              sweep_dir: str, stores: dict[str, str]) -> None:
    """One trial (runs in a Tune actor): the base config with this trial's values, as one BoxSup run."""
    from ray import tune

    from boxsup.platform.launch import run_boxsup

    name = tune.get_context().get_trial_name()
    cfg = apply_trial(base, params)
    cfg["tracking"].update(experiment=experiment, run_name=name)
    cfg["output"]["dir"] = sweep_dir
    if not cfg["proposals"]["store"] and cfg["proposals"]["method"] in stores:
        cfg["proposals"]["store"] = stores[cfg["proposals"]["method"]]
    tags = {"mlflow.parentRunId": parent_run_id, TRIAL_TAG: name}
    run_boxsup(cfg, progress=False, tags=tags, report_to_tune=True)


def start_parent_run(cfg: dict[str, Any], experiment: str, space_path: Path, space: SearchSpace) -> str:
    """The sweep's own MLflow run: the space file, the base config, the swept keys."""
    client = MlflowClient(tracking_uri(cfg["tracking"]["uri"]))
    exp_id = experiment_id(client, experiment)
    if client.search_runs([exp_id], max_results=1):
        raise BoxSupError(f"MLflow experiment {experiment!r} already holds runs; one experiment per sweep: "
                          "pick a new name with --experiment")
    tags = {SWEEP_ROLE_TAG: "sweep", SWEPT_KEYS_TAG: json.dumps(sorted(space.params))}
    run_id = create_run(client, exp_id, "sweep", tags)  # with MLflow's context tags, which its trials share
    logger = RunLogger(cfg["tracking"]["uri"], run_id)
    logger.log_params({f"space.{key}": json.dumps(dist) for key, dist in space.specs.items()}
                      | {"space.file": str(space_path), "num_samples": str(space.num_samples),
                         "max_concurrent_trials": str(space.max_concurrent_trials),
                         "scheduler": json.dumps(space.scheduler)})
    logger.log_artifact(space_path, "sweep")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base_config.yaml"
        base.write_text(yaml.safe_dump(cfg, sort_keys=False))
        logger.log_artifact(base, "sweep")
    return run_id


def finish_parent_run(cfg: dict[str, Any], experiment: str, parent_run_id: str, swept: list[str]) -> list[RunRow]:
    """Close trial runs Tune stopped early (ASHA) or killed, record the best trial on the parent run."""
    uri = tracking_uri(cfg["tracking"]["uri"])
    client = MlflowClient(uri)
    trials = experiment_runs(uri, experiment)
    for row in trials:
        if row.status == "RUNNING":  # its trial actor was stopped before run_boxsup could end the run
            client.set_tag(row.run_id, "boxsup.stopped", "early (scheduler) or killed")
            client.set_terminated(row.run_id, "KILLED")
            row.status = "KILLED"
    scored = [t for t in trials if t.val_miou is not None]
    if scored:
        best = scored[0]
        client.set_tag(parent_run_id, "best_trial", best.name)
        client.set_tag(parent_run_id, "best_run_id", best.run_id)
        RunLogger(uri, parent_run_id).log_metrics({"best_val_miou": best.val_miou}, step=0)
        RunLogger(uri, parent_run_id).log_params({f"best.{key}": str(best.params.get(key)) for key in swept})
    ok = any(t.status == "FINISHED" for t in trials)
    client.set_terminated(parent_run_id, "FINISHED" if ok else "FAILED")
    return trials


def run_sweep(space_path: str | Path, cfg: dict[str, Any], experiment: str | None = None,
              progress: bool = True) -> SweepResult:
    """Run the sweep ``space_path`` over the config ``cfg``; returns its trials, best first."""
    from ray import tune

    space_path = Path(space_path)
    space = load_search_space(space_path)
    check_against_config(space, cfg, str(space_path))
    cfg = absolute_paths(cfg)
    check_tracking_store(cfg["tracking"]["uri"])  # before Ray starts or anything is written
    check_output_location(cfg["output"]["dir"], "output.dir")
    experiment = experiment or default_experiment_name(space_path)
    per_trial_cpus = space.resources["cpu"] + run_cpus(cfg)
    init_ray(cfg, min_cpus=space.max_concurrent_trials * per_trial_cpus)  # before the proposals, which may use it
    stores = prebuild_proposals(space, cfg, progress)
    parent_run_id = start_parent_run(cfg, experiment, space_path, space)
    # val_miou comes every eval.every epochs; ASHA skips results without it, Tune's strict check would not
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    sweep_dir = join(cfg["output"]["dir"], "sweeps", experiment)  # trials' run dirs and Tune's state
    storage_path, storage_filesystem = open_location(sweep_dir).ray_storage("")
    trainable = tune.with_parameters(run_trial, base=cfg, experiment=experiment, parent_run_id=parent_run_id,
                                     sweep_dir=sweep_dir, stores=stores)
    tuner = tune.Tuner(
        tune.with_resources(trainable, space.resources),
        param_space=space.params,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=space.num_samples,
                                    search_alg=search_algorithm(space, cfg["seed"]), scheduler=space.tune_scheduler(),
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name="tune", storage_path=storage_path, storage_filesystem=storage_filesystem,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  verbose=1 if progress else 0),
    )
    grid = None
    try:
        grid = tuner.fit()
    finally:
        trials = finish_parent_run(cfg, experiment, parent_run_id, sorted(space.params))
    results = [grid[i] for i in range(len(grid))]  # a ResultGrid has __getitem__ and __len__, no __iter__
    errors = [trial_error(r.error) for r in results if r.error is not None]
    if errors and len(errors) == len(results):
        raise BoxSupError(f"sweep {experiment}: all {len(errors)} trials failed; the first: {errors[0]}")
    log.info("sweep %s: %d trials, %d failed", experiment, len(grid), len(errors))
    return SweepResult(experiment, tracking_uri(cfg["tracking"]["uri"]), parent_run_id, sorted(space.params), trials, errors)


def trial_error(error: BaseException) -> str:
    """One line for a failed trial: the user's mistake (BoxSupError) if that is what it was."""
    text = str(error)
    for line in text.splitlines():
        if "BoxSupError: " in line:
            return line.split("BoxSupError: ", 1)[1].strip()
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__
