"""`boxsup demo`'s comparison table and its --seeds: one run per row and seed, means and spreads as printed."""

from pathlib import Path

import yaml

from boxsup import demo
from boxsup.cli import main
from boxsup.data import synth as demo_data
from boxsup.platform.launch import RunResult


def result(val: float, pseudo: list[float] | None = None) -> RunResult:
    return RunResult("id", "dir", val, 0.9, {}, pseudo or [])


def test_one_seed_prints_each_runs_own_numbers():
    table = demo.results_table([("mask-supervised", [result(0.5)], 60.0),
                                ("BoxSup (lambda=3, k=5)", [result(0.49, [0.70, 0.75, 0.80])], 120.0)])
    assert "| mask-supervised | 0.500 | 100.0% | 0.900 | (GT masks) | 1.0 |" in table
    assert "| BoxSup (lambda=3, k=5) | 0.490 | 98.0% | 0.900 | 0.700 -> 0.800 | 2.0 |" in table
    assert "pseudo-label mIoU by round, BoxSup (lambda=3, k=5): 0.700 0.750 0.800" in table
    assert "by seed" not in table


def test_several_seeds_print_mean_and_sample_deviation_and_every_seed():
    table = demo.results_table([("mask-supervised", [result(0.50), result(0.52), result(0.54)], 180.0),
                                ("GrabCut", [result(0.40, [0.6]), result(0.44, [0.7]), result(0.42, [0.8])], 60.0)])
    assert "| mask-supervised | 0.520 ± 0.020 | 100.0% |" in table
    assert "| GrabCut | 0.420 ± 0.020 | 80.8% | 0.900 | 0.700 -> 0.700 | 1.0 |" in table
    assert "val mIoU by seed, GrabCut: 0.400 0.440 0.420" in table


def test_seeds_run_every_row_once_per_seed_with_its_own_name(tmp_path, monkeypatch):
    seen = []

    def fake_run(cfg):
        seen.append((cfg["seed"], cfg["tracking"]["run_name"], cfg["assign"]["lam"]))
        return result(0.4 + cfg["seed"] / 100, [] if cfg["data"]["supervision"] == "mask" else [0.7])

    monkeypatch.setattr(demo, "run_boxsup", fake_run)
    data = tmp_path / "data"
    (data / "ImageSets" / "Segmentation").mkdir(parents=True)
    (data / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"seed: 7\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    results = demo.run_demo(config, data, seeds=2)
    assert [len(runs) for _, runs, _ in results] == [2] * len(demo.VARIANTS)
    assert seen[:2] == [(7, "demo-mask-supervised-seed7", 3.0), (8, "demo-mask-supervised-seed8", 3.0)]
    assert len({name for _, name, _ in seen}) == 2 * len(demo.VARIANTS)
    assert "0.475 ± 0.007" in (tmp_path / "runs" / "demo_results.md").read_text()


def test_bad_seed_counts_are_one_line_errors(tmp_path, capsys):
    assert main(["demo", "--seeds", "0", "--data", str(tmp_path / "none")]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--extra-boxes", "--seeds", "3", "--data", str(tmp_path / "none")]) == 2
    assert "drop it with --extra-boxes" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_demo_never_writes_its_synthetic_set_into_a_folder_that_holds_a_dataset(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(demo, "run_boxsup", lambda cfg: seen.append(cfg["data"]["root"]) or result(0.4, [0.7]))
    coco_like = tmp_path / "coco"
    (coco_like / "annotations").mkdir(parents=True)
    (coco_like / "annotations" / "instances_train.json").write_text("{}")
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {{dir: {tmp_path / 'runs'}}}\n")
    demo.run_demo(config, coco_like)
    assert sorted(p.name for p in coco_like.iterdir()) == ["annotations"]  # nothing written into it
    assert seen == [str(coco_like)] * len(demo.VARIANTS)  # read as the user's data (its reader says what is wrong)


def test_demo_writes_its_set_into_an_absent_or_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "run_boxsup", lambda cfg: result(0.4, [0.7]))
    written = []

    def fake_generate(out):
        written.append(Path(out).parent.parent)
        Path(out).mkdir()
        (Path(out) / "classes.txt").write_text("a\n")

    monkeypatch.setattr(demo_data, "generate_dataset", fake_generate)
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {{dir: {tmp_path / 'runs'}}}\n")
    (tmp_path / "empty").mkdir()
    demo.run_demo(config, tmp_path / "empty")
    demo.run_demo(config, tmp_path / "absent")
    assert written == [tmp_path, tmp_path]  # written beside the target, then moved into place whole
    assert (tmp_path / "empty" / "classes.txt").is_file() and (tmp_path / "absent" / "classes.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absent", "c.yaml", "empty", "runs"]


def test_demo_with_data_sources_sets_each_rows_supervision_on_every_source(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(demo, "run_boxsup", lambda cfg: seen.append(
        ([s["supervision"] for s in cfg["data"]["sources"]], cfg["proposals"]["method"])) or result(0.4, [0.7]))
    for name in ("a", "b", "v"):
        (tmp_path / name / "ImageSets" / "Segmentation").mkdir(parents=True)
    sources = [{"name": n, "format": "voc", "root": str(tmp_path / n), "split": "train", "supervision": "semi",
                "mask_fraction": 0.5} for n in ("a", "b")]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output": {"dir": str(tmp_path / "runs")}, "data": {
        "sources": sources, "val": {"name": "v", "format": "voc", "root": str(tmp_path / "v"), "split": "val"}}}))
    demo.run_demo(config)
    assert seen == [(["mask", "mask"], "ss"), (["box", "box"], "ss"), (["box", "box"], "ss"), (["box", "box"], "ss"),
                    (["box", "box"], "rectangles"), (["box", "box"], "grabcut")]


def test_demo_data_beside_data_sources_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "sources": [{"name": "a", "format": "voc", "root": str(tmp_path), "split": "train", "supervision": "box"}],
        "val": {"name": "v", "format": "voc", "root": str(tmp_path), "split": "val"}}}))
    assert main(["demo", "--config", str(config), "--data", str(tmp_path / "d")]) == 2
    assert "reads data.sources; drop --data" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
