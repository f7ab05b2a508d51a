"""`boxsup sweep` and `boxsup runs`: a real 2-trial sweep against a real `mlflow server` on loopback."""


import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from boxsup.cli import main
from boxsup.config import DEFAULTS, flatten, load_config
from boxsup.data.synth import generate_dataset
from boxsup.errors import BoxSupError
from boxsup.platform.runs_table import experiment_runs, runs_report
from boxsup.platform.search_space import load_search_space
from boxsup.platform.sweep import check_against_config, finish_parent_run, start_parent_run
from boxsup.platform.tracking import start_run
from boxsup.serving.trained_model import read_checkpoint

SPACE = """params:
  assign.k: {grid: [1, 2]}
num_samples: 1
max_concurrent_trials: 1
resources_per_trial: {cpu: 1}
"""


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-data")
    generate_dataset(root, n_images=16, size=64, seed=4)
    return root


@pytest.mark.ray
@pytest.mark.slow
def test_two_trial_sweep_is_tracked_on_an_mlflow_server(ray_session, tmp_path, sweep_data, tiny_config, mlflow_server, capsys):
    config = tiny_config(sweep_data)
    (tmp_path / "space.yaml").write_text(SPACE)
    args = ["sweep", "--space", str(tmp_path / "space.yaml"), "--config", str(config), "--experiment", "sw",
            "--set", f"tracking.uri={mlflow_server}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sweep sw: 2 trial runs" in out and "00000_k=1" in out and "00001_k=2" in out
    assert "View run" not in out  # MLflow's links, printed when a run on a server ends, are left out

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("sw")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("boxsup.role") == "sweep"]
    trials = [r for r in runs if r is not parent and r.info.run_id != parent.info.run_id]
    assert len(trials) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    context = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit")
    assert all(r.data.tags.get(key) == parent.data.tags.get(key) for r in trials for key in context)  # not Ray's worker
    assert "mlflow.source.name" in parent.data.tags
    assert parent.info.status == "FINISHED" and parent.data.params["space.assign.k"] == '{"grid": [1, 2]}'
    (best,) = [r for r in trials if r.info.run_id == parent.data.tags["best_run_id"]]
    assert best.data.metrics["val_miou"] == max(r.data.metrics["val_miou"] for r in trials)
    assert parent.data.metrics["best_val_miou"] == best.data.metrics["val_miou"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {"sweep/space.yaml", "sweep/base_config.yaml"}

    assert sorted(r.data.params["assign.k"] for r in trials) == ["1", "2"]
    for run in trials:
        assert run.info.status == "FINISHED"
        assert set(flatten(DEFAULTS)) <= set(run.data.params)  # every config key is a param
        for metric in ("train_loss", "val_miou", "pseudo_miou"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == [0, 1, 2] and all(np.isfinite(m.value) for m in history), metric
        class_iou = {k for k in run.data.metrics if k.startswith("val_iou_")}
        assert {"val_iou_background", "val_iou_star"} <= class_iou
        listed = {a.path for a in client.list_artifacts(run.info.run_id)}
        listed |= {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert {"config.yaml", "figures/label_evolution.png", "figures/confusion_matrix.png"} <= listed
        assert "checkpoint" not in listed  # stored once: as the data of the run's model
    state = read_checkpoint(f"runs:/{best.info.run_id}/model", mlflow_server)
    assert state["config"]["assign"]["k"] == int(best.data.params["assign.k"]) and state["model"]

    assert main(["runs", "--experiment", "sw", "--tracking-uri", mlflow_server]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "status", "assign.k"]
    assert table[2].split()[0] == best.info.run_name  # best val_miou first
    assert len(table) == 5 and f"model runs:/{best.info.run_id}/model" in table[4]  # the best run's MLflow model


def test_space_mistakes_stop_the_sweep_before_ray_starts(tmp_path, sweep_data, tiny_config, capsys):
    config = tiny_config(sweep_data)
    (tmp_path / "bad.yaml").write_text("params:\n  assign.lamda: {grid: [1.0, 3.0]}\n")
    assert main(["sweep", "--space", str(tmp_path / "bad.yaml"), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.yaml" in err and "assign.lamda" in err and "did you mean assign.lam" in err and "\n" not in err


def test_space_and_config_must_agree(tmp_path):
    (tmp_path / "methods.yaml").write_text("params:\n  proposals.method: {grid: [ss, grabcut]}\n")
    (tmp_path / "asha.yaml").write_text("params:\n  assign.k: {grid: [1, 5]}\nscheduler: {asha: {max_t: 40}}\n")
    cfg = load_config(None, ["data.root=data", "proposals.store=/shared/ss", "train.epochs=30"])
    with pytest.raises(BoxSupError, match="sweeps proposals.method but the config fixes proposals.store"):
        check_against_config(load_search_space(tmp_path / "methods.yaml"), cfg, "methods.yaml")
    with pytest.raises(BoxSupError, match="max_t 40 exceeds train.epochs 30"):
        check_against_config(load_search_space(tmp_path / "asha.yaml"), cfg, "asha.yaml")


def test_runs_of_stopped_trials_are_closed_and_the_best_recorded(tmp_path):
    """Trials ASHA stops never end their own MLflow run: the sweep marks them KILLED."""
    (tmp_path / "space.yaml").write_text(SPACE)
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config(None, ["data.root=data", f"tracking.uri={uri}"])
    parent = start_parent_run(cfg, "asha", tmp_path / "space.yaml", load_search_space(tmp_path / "space.yaml"))
    client = MlflowClient(uri)
    for name, k, miou, done in (("a", 1, 0.40, True), ("b", 2, 0.55, True), ("c", 3, 0.30, False)):
        run_id = start_run(uri, "asha", name, load_config(None, ["data.root=data", f"assign.k={k}"]), {"mlflow.parentRunId": parent})
        client.log_metric(run_id, "val_miou", miou)
        if done:
            client.set_terminated(run_id, "FINISHED")
    rows = finish_parent_run(cfg, "asha", parent, ["assign.k"])
    assert [(r.name, r.status) for r in rows] == [("b", "FINISHED"), ("a", "FINISHED"), ("c", "KILLED")]
    run = client.get_run(parent)
    assert run.data.tags["best_trial"] == "b" and run.data.params["best.assign.k"] == "2"
    assert run.info.status == "FINISHED"
    with pytest.raises(BoxSupError, match="already holds runs"):
        start_parent_run(cfg, "asha", tmp_path / "space.yaml", load_search_space(tmp_path / "space.yaml"))
    assert [r.name for r in experiment_runs(uri, "asha")] == ["b", "a", "c"]


def test_runs_report_errors_name_the_store_and_experiment(tmp_path):
    with pytest.raises(BoxSupError, match="no MLflow store there"):
        runs_report(f"sqlite:///{tmp_path}/missing.db", "x")
    uri = f"sqlite:///{tmp_path}/m.db"
    start_run(uri, "present", "r", load_config(None, ["data.root=data", ]))
    with pytest.raises(BoxSupError, match=r"no MLflow experiment 'absent' \(there: .*present"):
        runs_report(uri, "absent")


@pytest.mark.ray
@pytest.mark.slow
def test_sampled_trial_values_are_fixed_by_the_seed(ray_session, tmp_path):
    from ray import tune

    from boxsup.platform.sweep import search_algorithm

    (tmp_path / "random.yaml").write_text("params:\n  assign.lam: {loguniform: [0.5, 20.0]}\n"
                                          "  assign.k: {randint: [1, 10]}\nnum_samples: 4\n")
    space = load_search_space(tmp_path / "random.yaml")

    def sampled(seed: int, name: str) -> list[tuple[float, int]]:
        tuner = tune.Tuner(lambda params: tune.report({"x": 0.0}), param_space=space.params,
                           tune_config=tune.TuneConfig(num_samples=4, search_alg=search_algorithm(space, seed)),
                           run_config=tune.RunConfig(name=name, storage_path=str(tmp_path / "tune"), verbose=0))
        return sorted((r.config["assign.lam"], r.config["assign.k"]) for r in tuner.fit())

    first = sampled(7, "a")
    assert sampled(7, "b") == first and sampled(8, "c") != first
    assert len(set(first)) == 4 and all(0.5 <= lam <= 20.0 and 1 <= k < 10 for lam, k in first)


@pytest.mark.ray
@pytest.mark.slow
def test_in_process_trials_report_every_epoch_to_tune(ray_session, tmp_path, sweep_data, tiny_config):
    """ray.num_workers 0: the trial runs the loop itself and reports to Tune (what ASHA decides on)."""
    from ray import tune

    from boxsup.platform.sweep import run_sweep

    (tmp_path / "space.yaml").write_text(SPACE)
    cfg = load_config(tiny_config(sweep_data), ["ray.num_workers=0", f"output.dir={tmp_path / 'out'}"])
    result = run_sweep(tmp_path / "space.yaml", cfg, experiment="local", progress=False)
    assert [t.status for t in result.trials] == ["FINISHED", "FINISHED"] and not result.errors
    analysis = tune.ExperimentAnalysis(str(tmp_path / "out" / "sweeps" / "local" / "tune"))
    reported = {trial.config["assign.k"]: trial.last_result for trial in analysis.trials}
    assert sorted(reported) == [1, 2]
    by_k = {int(t.params["assign.k"]): t.val_miou for t in result.trials}
    for k, last in reported.items():
        assert last["epoch"] == 2 and last["training_iteration"] == 3
        assert last["val_miou"] == pytest.approx(by_k[k])  # what Tune saw is what MLflow holds
