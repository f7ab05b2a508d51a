"""output.keep_label_rounds: the label store keeps what resuming and the figures need, and nothing is lost early."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from boxsup.config import DEFAULTS, load_config
from boxsup.data.synth import generate_dataset
from boxsup.errors import BoxSupError
from boxsup.platform.launch import run_boxsup
from boxsup.trainers.settings import LabelSchedule


def plan(epochs: int, keep=None, warmup: int = 1, update: bool = True) -> LabelSchedule:
    cfg = copy.deepcopy(DEFAULTS)
    cfg["train"]["epochs"], cfg["assign"]["warmup_epochs"], cfg["assign"]["update"] = epochs, warmup, update
    cfg["output"]["keep_label_rounds"] = keep
    return LabelSchedule.from_config(cfg)


def test_the_figures_rounds_and_the_round_in_use_are_kept():
    schedule = plan(10)
    assert schedule.planned_rounds() == list(range(10)) and schedule.figure_rounds() == [0, 5, 9]
    assert schedule.rounds_to_delete(stored=list(range(8)), in_use=7) == [1, 2, 3, 4, 6]
    assert plan(10, keep=3).rounds_to_delete(stored=list(range(8)), in_use=7) == [1, 2, 3, 4]
    assert plan(10, keep="all").rounds_to_delete(stored=list(range(8)), in_use=7) == []
    # a round written after the saved checkpoint (a crash between round and checkpoint) is never deleted
    assert 8 not in schedule.rounds_to_delete(stored=list(range(9)), in_use=7)
    assert plan(10, warmup=4).planned_rounds() == [0, 4, 5, 6, 7, 8, 9]
    assert plan(10, update=False).planned_rounds() == [0]
    assert [e for e in range(10) if plan(10, warmup=4).updates_in(e)] == [0, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("value", [0, -2, "some", 1.5])
def test_a_bad_retention_value_is_one_line(tmp_path, value):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x"}, "output": {"keep_label_rounds": value}}))
    with pytest.raises(BoxSupError, match="output.keep_label_rounds"):
        load_config(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("retention") / "data"
    generate_dataset(root, n_images=10, size=48, seed=2)
    return root


def run(tmp_path: Path, data_root: Path, name: str, epochs: int = 6, **output) -> Path:
    raw = {"seed": 3, "data": {"root": str(data_root), "crop_size": 48},
           "proposals": {"method": "ss", "max_candidates": 100}, "model": {"backbone": "small", "weights": "none"},
           "train": {"epochs": epochs, "batch_size": 4, "lr": 0.01, "lr_step": 4, "num_threads": 1},
           "ray": {"num_workers": 0}, "eval": {"every": 100},
           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "retention", "run_name": name},
           "output": {"dir": str(tmp_path / "runs"), **output}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Path(run_boxsup(load_config(path), progress=False).run_dir)


def label_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir / "labels")): p.read_bytes() for p in sorted((run_dir / "labels").rglob("*.png"))}


@pytest.mark.slow
def test_a_run_keeps_the_last_round_and_the_figures_rounds_and_resumes_from_them(tmp_path, data_root, monkeypatch):
    kept_all = run(tmp_path, data_root, "all", keep_label_rounds="all")
    default = run(tmp_path, data_root, "default")
    assert sorted(p.name for p in (default / "labels").iterdir()) == ["round_000", "round_003", "round_005"]
    assert (default / "label_evolution.png").is_file()
    everything = label_files(kept_all)
    assert label_files(default) == {k: v for k, v in everything.items() if k.split("/")[0] in
                                    ("round_000", "round_003", "round_005")}
    # a run that stops after epoch 2 (rounds 1 and 2 written; round 1 deleted once epoch 2's checkpoint was
    # saved) resumes from what was kept and ends with the same label maps as the run that never stopped
    monkeypatch.setenv("BOXSUP_FAULT", "raise:2")
    with pytest.raises(RuntimeError, match="injected failure after epoch 2"):
        run(tmp_path, data_root, "stopped")
    stopped = tmp_path / "runs" / "stopped"
    assert sorted(p.name for p in (stopped / "labels").iterdir()) == ["round_000", "round_002"]
    monkeypatch.delenv("BOXSUP_FAULT")
    resumed = Path(run_boxsup({}, resume=stopped, progress=False).run_dir)
    assert label_files(resumed) == label_files(default)
