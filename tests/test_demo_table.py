"""`boxsup demo`'s comparison table and its --seeds: one run per row and seed, means and spreads as printed."""

from boxsup import demo
from boxsup.cli import main
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
