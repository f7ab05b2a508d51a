"""One whole tiny run through the CLI: data, proposals, label rounds, training, MLflow, evaluation."""

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from boxsup.cli import main
from boxsup.data.synth import generate_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, n_images=16, size=64, seed=3)
    return root


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_boxsup_run_is_tracked_and_evaluable(ray_session, tmp_path, tiny_data, tiny_config, capsys, monkeypatch):
    """Two Ray Train workers and two assignment actors, end to end; nothing lands in the working directory."""
    config = tiny_config(tiny_data)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert main(["train", "--config", str(config), "--set", "tracking.run_name=tiny"]) == 0
    out = capsys.readouterr().out
    assert "val mIoU" in out and "pseudo-label mIoU by round" in out

    run_dir = tmp_path / "runs" / "tiny"
    labels = sorted((run_dir / "labels").iterdir())
    assert [p.name for p in labels] == ["round_000", "round_001", "round_002"]
    train_ids = (tiny_data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for round_dir in labels:  # every training image got a label map in every round
        assert sorted(p.stem for p in round_dir.glob("*.png")) == sorted(train_ids)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["assign.lam"] == "3.0" and run.data.params["model.backbone"] == "small"
    for metric in ("train_loss", "val_miou", "pseudo_miou"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert len(history) == 3 and all(np.isfinite(m.value) for m in history), metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "figures"} <= artifacts and "checkpoint" not in artifacts  # the model holds the checkpoint
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/confusion_matrix.png", "figures/label_evolution.png"}

    assert main(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--data", str(tiny_data), "--split", "val"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert list(workdir.iterdir()) == []  # no ./mlruns: artifacts sit beside the tracking database
    assert (tmp_path / "mlartifacts").is_dir()


def test_user_mistakes_are_one_line_errors(tmp_path, tiny_data, tiny_config, capsys):
    config = tiny_config(tiny_data)
    assert main(["train", "--config", str(config), "--set", "assign.k=zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boxsup: error:") and "assign.k" in err and "\n" not in err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tiny_data)]) == 2
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
    assert main(["proposals", "--data", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "train.txt: split list not found" in capsys.readouterr().err
