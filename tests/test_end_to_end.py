"""One whole tiny run through the CLI: data, proposals, label rounds, training, MLflow, evaluation."""

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from boxsup.cli import main
from boxsup.data.synth import generate_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, n_images=16, size=64, seed=3)
    return root


def tiny_config(tmp_path, data_root, **extra):
    cfg = {
        "seed": 1,
        "data": {"root": str(data_root), "classes": "classes.txt", "supervision": "box", "crop_size": 64},
        "proposals": {"method": "ss", "max_candidates": 200},
        "model": {"backbone": "small", "weights": "none"},
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "lr_step": 2, "num_threads": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tiny"},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_boxsup_run_is_tracked_and_evaluable(tmp_path, tiny_data, capsys):
    config = tiny_config(tmp_path, tiny_data)
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
    assert {"config.yaml", "checkpoint", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/confusion_matrix.png", "figures/label_evolution.png"}

    assert main(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--data", str(tiny_data), "--split", "val"]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_user_mistakes_are_one_line_errors(tmp_path, tiny_data, capsys):
    config = tiny_config(tmp_path, tiny_data)
    assert main(["train", "--config", str(config), "--set", "assign.k=zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boxsup: error:") and "assign.k" in err and "\n" not in err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tiny_data)]) == 2
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
    assert main(["proposals", "--data", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "train.txt: split list not found" in capsys.readouterr().err
