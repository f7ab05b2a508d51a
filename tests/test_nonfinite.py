"""A diverging run stops in one line and publishes nothing made from non-finite weights; precisions train.

A learning rate of 1e20 makes the small FCN's loss NaN within its first epoch. The run must end
FAILED with the line as its error tag, with no checkpoint, label round or MLflow model made from
the broken weights, and ``--resume --set train.lr=...`` must continue from the last good epoch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.synth import generate_dataset
from boxsup.errors import BoxSupError
from boxsup.models import build_model, on_device, parameter_groups
from boxsup.models.checkpoint import load_tensor_file
from boxsup.models.precision import PRECISIONS, Precision, resolve_precision
from boxsup.trainers.epoch import batch_log_probs, train_one_epoch
from boxsup.trainers.loop import rebase_learning_rate
from tiny_checkpoints import save_tiny_checkpoint, write_images

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite") / "data"
    generate_dataset(root, n_images=6, size=48, seed=3)
    return root


def in_process(tiny_config, data, **overrides):
    """In this process, a step per image (so a bad rate shows within the epoch it is set in)."""
    return tiny_config(data, ray__num_workers=0, data__crop_size=48, proposals__max_candidates=100, train__batch_size=1,
                       **overrides)


def the_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    steps = {k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in ("train_loss", "pseudo_miou")}
    return client, run, steps


def logged_models(client: MlflowClient, run) -> list:
    return client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                       filter_string=f"source_run_id = '{run.info.run_id}'")


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("boxsup: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_run_diverging_in_its_first_epoch_fails_in_one_line_and_leaves_nothing(data, tmp_path, tiny_config, capsys):
    assert main(["train", "--config", str(in_process(tiny_config, data, train__lr=1e20))]) == 2
    line = one_line(capsys.readouterr().err)
    assert "diverged in epoch 0 at step" in line and "learning rate 1e+20" in line and "lower train.lr" in line
    client, run, steps = the_run(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["boxsup.error"] in line
    assert steps == {"train_loss": [], "pseudo_miou": []} and logged_models(client, run) == []
    assert not (tmp_path / "runs" / "r").exists()  # nothing trained: the name is free again


def test_a_diverged_epoch_keeps_the_last_good_checkpoint_and_a_lower_rate_resumes(data, tmp_path, tiny_config, capsys,
                                                                                 monkeypatch):
    run_dir = tmp_path / "runs" / "r"
    monkeypatch.setenv("BOXSUP_FAULT", "raise:0")  # stop after the good epoch 0 ...
    with pytest.raises(RuntimeError, match="injected failure"):
        main(["train", "--config", str(in_process(tiny_config, data))])
    monkeypatch.delenv("BOXSUP_FAULT")
    good = (run_dir / "checkpoints" / "latest" / "state.pt").read_bytes()
    capsys.readouterr()

    assert main(["train", "--resume", str(run_dir), "--set", "train.lr=1e20"]) == 2  # ... then diverge in epoch 1
    line = one_line(capsys.readouterr().err)
    assert "diverged in epoch 1" in line and f"--resume {run_dir} --set train.lr=LOWER" in line
    client, run, steps = the_run(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["boxsup.error"] in line
    assert steps == {"train_loss": [0], "pseudo_miou": [0]}  # epoch 1 (and its round's metrics) never logged
    assert sorted(p.name for p in (run_dir / "labels").iterdir()) == ["round_000", "round_001"]  # none from epoch 1
    assert (run_dir / "checkpoints" / "latest" / "state.pt").read_bytes() == good
    assert logged_models(client, run) == [] and not (run_dir / "checkpoint.pt").exists()

    assert main(["train", "--resume", str(run_dir), "--set", "train.lr=0.005"]) == 0
    client, run, steps = the_run(tmp_path)
    assert run.info.status == "FINISHED" and "boxsup.error" not in run.data.tags
    assert steps == {"train_loss": [0, 1, 2], "pseudo_miou": [0, 1, 2]}
    rates = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    assert rates[0] == pytest.approx(0.01) and rates[1] == pytest.approx(0.005) and rates[2] == pytest.approx(0.0005)
    assert len(logged_models(client, run)) == 1


def nan_checkpoint(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "checkpoint.pt")
    state = load_tensor_file(path, str(path), "checkpoint")
    state["model"]["classifier.weight"][0, 0] = float("nan")
    torch.save(state, path)
    return path


@pytest.mark.parametrize("command", [
    ["predict", "--images", "IMAGES", "--out", "OUT"],
    ["export", "--format", "torchscript", "--out", "OUT/model.pt"],
    ["eval", "--data", "DATA"],
], ids=["predict", "export", "eval"])
def test_a_checkpoint_with_non_finite_weights_is_refused_in_one_line(command, data, tmp_path, capsys):
    checkpoint = nan_checkpoint(tmp_path)
    images = write_images(tmp_path / "images", [(40, 32)])[0].parent
    swap = {"IMAGES": str(images), "OUT": str(tmp_path / "out"), "OUT/model.pt": str(tmp_path / "out" / "model.pt"),
            "DATA": str(data)}
    assert main([command[0], "--checkpoint", str(checkpoint), *[swap.get(a, a) for a in command[1:]]]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(checkpoint) in line and "1 of" in line and "NaN or infinite" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def batches(n: int, nan_at: int | None = None, seed: int = 0):
    rng = torch.Generator().manual_seed(seed)
    for step in range(n):
        images = torch.randn(2, 3, 32, 32, generator=rng)
        if step == nan_at:
            images[0, 0, 0, 0] = float("nan")
        yield images, torch.randint(0, 3, (2, 32, 32), generator=rng)


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_every_precision_trains_with_a_finite_loss_on_a_cpu(name):
    torch.manual_seed(0)
    model = on_device(build_model("small", 3), CPU)
    optimizer = torch.optim.SGD(parameter_groups(model, 0.01), lr=0.01, momentum=0.9)
    precision = Precision(name)
    loss = train_one_epoch(model, batches(4), optimizer, CPU, False, precision, precision.grad_scaler(CPU))
    assert loss.images == 8 and loss.first_bad_step == -1 and math.isfinite(loss.mean) and loss.mean > 0
    log_probs = batch_log_probs(model, torch.randn(2, 3, 32, 32), CPU, flip=True, precision=precision)
    assert log_probs.dtype == torch.float32 and torch.isfinite(log_probs).all()
    np.testing.assert_allclose(log_probs.exp().sum(1).numpy(), 1.0, atol=1e-4)  # costs stay float32 probabilities


def test_the_epoch_names_the_first_step_whose_loss_is_not_finite():
    torch.manual_seed(0)
    model = build_model("small", 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = train_one_epoch(model, batches(5, nan_at=2), optimizer, CPU, False)
    assert loss.first_bad_step == 2 and not math.isfinite(loss.mean)


def test_auto_precision_is_fp32_on_a_cpu_and_train_amp_says_what_replaced_it(tmp_path, tiny_config, data):
    assert resolve_precision("auto", CPU).name == "fp32"
    assert PRECISIONS == ("auto", "bf16", "fp16", "fp32")
    with pytest.raises(BoxSupError, match="train.amp was removed: replaced by train.precision"):
        load_config(tiny_config(data, train__amp=True))
    with pytest.raises(BoxSupError, match="config key train.precision"):
        load_config(tiny_config(data, train__precision="fp8"))


def test_a_lower_learning_rate_on_resume_scales_every_group_and_the_schedule():
    model = build_model("small", 3)
    optimizer = torch.optim.SGD(parameter_groups(model, 0.01), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    optimizer.step()
    scheduler.step()  # one step down: every group at 0.1 x its base
    before = [group["lr"] for group in optimizer.param_groups]
    rebase_learning_rate(optimizer, scheduler, parameter_groups(model, 0.001))
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([r / 10 for r in before])
    optimizer.step()
    scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([r / 100 for r in before])


def test_a_run_in_bf16_labels_trains_and_scores_with_finite_numbers(data, tmp_path, tiny_config):
    """bf16 autocast exists on a CPU: the label rounds, the epochs and the evaluation all run under it."""
    assert main(["train", "--config", str(in_process(tiny_config, data, train__precision="bf16"))]) == 0
    client, run, steps = the_run(tmp_path)
    assert run.data.params["train.precision"] == "bf16" and steps["pseudo_miou"] == [0, 1, 2]
    for key in ("train_loss", "val_miou", "pseudo_miou"):
        assert all(math.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, key)), key
