"""What every ``boxsup`` command shares: --version, -q/-v, progress bars only on a terminal, help with
defaults, --print-config, counts written as a reader says them, and ``boxsup runs --json/--csv``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

import boxsup.cli as cli
from boxsup.cli import build_parser, main, subcommand_parsers, synth_summary
from boxsup.config import load_config
from boxsup.demo_extra_boxes import extra_boxes_configs
from boxsup.utils.progress import allow_progress, progress_bar, show_progress
from boxsup.utils.text import plural

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_SPACE = REPO / "search_spaces" / "demo.yaml"


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"boxsup {version('boxsup')}"


# --- help -------------------------------------------------------------------------------------------------


def every_parser() -> list[argparse.ArgumentParser]:
    parser = build_parser()
    return [parser, *subcommand_parsers(parser)]


def test_every_option_of_every_command_has_help():
    parsers = every_parser()
    assert {p.prog for p in parsers} >= {"boxsup data synth", "boxsup proposals import", "boxsup eval", "boxsup demo"}
    lacking = [f"{p.prog} {'/'.join(a.option_strings)}" for p in parsers for a in p._actions
               if a.option_strings and not (a.help or "").strip()]
    assert not lacking, lacking
    for parser in parsers:  # and every subcommand has a line in its parent's list
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all((choice.help or "").strip() for choice in action._choices_actions), parser.prog


def test_help_shows_defaults_and_never_a_none():
    helps = {p.prog: p.format_help() for p in every_parser()}
    squeeze = {prog: re.sub(r"\s+", " ", text).replace("- ", "-") for prog, text in helps.items()}  # unwrapped
    assert "(default: 240)" in squeeze["boxsup data synth"] and "(default: 0)" in squeeze["boxsup data synth"]
    assert "test-time scales: the network's outputs at each are averaged (default: 1.0)" in squeeze["boxsup eval"]
    assert "(default: --log-to-run)" in squeeze["boxsup eval"]
    assert "(default: configs/demo.yaml)" in squeeze["boxsup demo"]
    proposals = squeeze["boxsup proposals"]  # a help that gives its default itself is left as it is
    assert "(default: proposals.max_candidates's, 1000)" in proposals and "(default: 1000)" not in proposals
    assert not [prog for prog, text in squeeze.items() if "(default: None)" in text or "(default: False)" in text]


# --- -q and -v --------------------------------------------------------------------------------------------


@pytest.fixture
def seen(monkeypatch, tmp_path):
    """``boxsup data synth`` replaced by a probe of the logging and progress settings it runs under."""
    found: dict[str, object] = {}

    def probe(args):
        found.update(root=logging.getLogger().level, boxsup_debug=logging.getLogger("boxsup.cli").isEnabledFor(10),
                     mlflow_info=logging.getLogger("mlflow").isEnabledFor(logging.INFO),
                     torch_debug=logging.getLogger("torch").isEnabledFor(logging.DEBUG),
                     bars=show_progress(Terminal()))

    monkeypatch.setattr(cli, "_cmd_synth", probe)
    return found


@pytest.mark.parametrize("flags, root, boxsup_debug, bars", [
    ([], logging.INFO, False, True),
    (["-q"], logging.WARNING, False, False),
    (["--quiet"], logging.WARNING, False, False),
    (["-v"], logging.INFO, True, True),
    (["--verbose"], logging.INFO, True, True),
])
def test_quiet_and_verbose_set_the_levels_before_or_after_the_command(seen, flags, root, boxsup_debug, bars):
    before = (logging.getLogger().level, logging.getLogger("boxsup").level, logging.getLogger("mlflow").level)
    for argv in ([*flags, "data", "synth", "--out", "x"], ["data", "synth", *flags, "--out", "x"]):
        seen.clear()
        assert main(argv) == 0
        assert seen == {"root": root, "boxsup_debug": boxsup_debug, "mlflow_info": False, "torch_debug": False,
                        "bars": bars}, argv
    # the process's own levels come back (the tests call main many times)
    assert (logging.getLogger().level, logging.getLogger("boxsup").level, logging.getLogger("mlflow").level) == before
    assert show_progress(Terminal())


def test_quiet_and_verbose_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-q", "data", "synth", "-v", "--out", "x"])
    assert exc.value.code == 2 and "give one" in capsys.readouterr().err


# --- progress bars ----------------------------------------------------------------------------------------


def test_bars_are_drawn_on_a_terminal_only_and_never_after_quiet():
    assert show_progress(Terminal()) and not show_progress(io.StringIO())
    drawn = Terminal()
    assert list(progress_bar(range(3), desc="x", file=drawn)) == [0, 1, 2]
    assert "\r" in drawn.getvalue() and "x:" in drawn.getvalue()  # a terminal sees the bar as before
    redirected = io.StringIO()
    assert list(progress_bar(range(3), desc="x", file=redirected)) == [0, 1, 2]
    assert redirected.getvalue() == ""
    unwanted = Terminal()  # the caller said no (a Ray worker): no bar even on a terminal
    assert list(progress_bar(range(3), enabled=False, file=unwanted)) == [0, 1, 2] and unwanted.getvalue() == ""
    allow_progress(False)
    try:
        assert not show_progress(Terminal())
    finally:
        allow_progress(True)


def test_a_redirected_stderr_gets_no_bar_frames(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "set"), "--images", "4", "--size", "48"]) == 0
    assert "\r" not in capsys.readouterr().err  # pytest's capture is not a terminal, as a log file is not


def test_every_bar_in_boxsup_goes_through_progress_bar():
    """One place decides (``boxsup.utils.progress``). serving/predict.py draws its own bar; ``boxsup
    predict`` passes it ``progress=show_progress()``."""
    own = {"boxsup/utils/progress.py", "boxsup/serving/predict.py"}
    direct = [str(p.relative_to(REPO)) for p in sorted((REPO / "boxsup").rglob("*.py"))
              if str(p.relative_to(REPO)) not in own and re.search(r"\btqdm\(", p.read_text())]
    assert not direct, direct
    assert "progress=show_progress()" in (REPO / "boxsup" / "cli.py").read_text()


# --- --print-config ---------------------------------------------------------------------------------------


def printed_config(capsys, argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_train_print_config_is_the_loaded_config_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = ["train.epochs=3", f"output.dir={tmp_path / 'runs'}", "assign.k=2"]
    out = printed_config(capsys, ["train", "--config", str(DEMO_CONFIG), "--set", *sets, "--print-config"])
    assert yaml.safe_load(out) == load_config(DEMO_CONFIG, sets)
    assert list(tmp_path.iterdir()) == []  # no run directory, no mlflow.db, no demo data


def test_train_print_config_refuses_a_bad_setting_in_one_line(capsys):
    assert main(["train", "--config", str(DEMO_CONFIG), "--set", "train.epochs=-1", "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("boxsup: error: --set train.epochs=-1")


def test_train_resume_print_config_is_the_runs_config_with_the_changes(tmp_path, capsys):
    cfg = load_config(DEMO_CONFIG, ["train.epochs=4"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"mlflow_run_id": "abc", "name": "run", "config": cfg}))
    out = printed_config(capsys, ["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=6",
                                  "--print-config"])
    assert yaml.safe_load(out) == {**cfg, "train": {**cfg["train"], "epochs": 6}}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.json"]


def test_sweep_print_config_is_the_base_config_checked_against_the_space(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = printed_config(capsys, ["sweep", "--space", str(DEMO_SPACE), "--config", str(DEMO_CONFIG),
                                  "--set", "train.epochs=2", "--print-config"])
    assert out.startswith("# the base config of every trial")
    assert yaml.safe_load(out) == load_config(DEMO_CONFIG, ["train.epochs=2"])
    assert list(tmp_path.iterdir()) == []


def test_demo_print_config_writes_no_demo_set(tmp_path, capsys):
    data = tmp_path / "absent"
    out = printed_config(capsys, ["demo", "--config", str(DEMO_CONFIG), "--data", str(data), "--set", "assign.k=3",
                                  "--print-config"])
    assert yaml.safe_load(out) == load_config(DEMO_CONFIG, [f"data.root={data}", "assign.k=3"])
    assert "#   mask-supervised: data.supervision=mask" in out
    assert not data.exists()


def test_demo_extra_boxes_print_config_gives_both_runs(tmp_path, capsys):
    data = tmp_path / "absent"
    out = printed_config(capsys, ["demo", "--extra-boxes", "--config", str(DEMO_CONFIG), "--data", str(data),
                                  "--print-config"])
    runs = extra_boxes_configs(DEMO_CONFIG, data, tmp_path / "absent-coco-boxes", [])
    assert list(yaml.safe_load_all(out)) == [cfg for _, cfg in runs]
    assert list(tmp_path.iterdir()) == []


# --- counts -----------------------------------------------------------------------------------------------


def test_plural():
    assert [plural(n, "label map") for n in (0, 1, 2)] == ["0 label maps", "1 label map", "2 label maps"]
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class", "classes") == "3 classes"


def test_predict_summary_counts_as_a_reader_says_them():
    from boxsup.serving.predict import PredictReport

    assert PredictReport(Path("out"), 1).summary() == "out: 1 label map written, 0 unreadable images"
    some = PredictReport(Path("out"), 2, [(Path("a.tif"), "why")])
    assert some.summary() == "out: 2 label maps written, 1 unreadable image (a.tif)"


def test_data_synth_prints_a_sentence_not_a_dict(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "set"), "--images", "4", "--size", "48"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {tmp_path / 'set'}: 4 images (3 train, 1 val), ") and "{" not in line
    assert re.search(r"visible object pixels fill \d+% of a box on average$", line)
    summary = {"images": {"val": 1, "train": 1, "trainval": 2}, "objects": {"star": 1, "ring": 0},
               "mean_box_fill": 0.5, "mean_object_fill": 0.75}
    assert synth_summary(summary) == ("2 images (1 train, 1 val), 1 object (star 1, ring 0); visible object pixels "
                                      "fill 50% of a box on average (whole objects, occluded parts included: 75%)")


# --- boxsup runs --json / --csv ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Three finished runs in a SQLite store, written straight with MLflow (no training): two differ in
    data.supervision, one has no val_miou yet."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("runs_table")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("tbl", artifact_location=str(root / "artifacts"))
    for name, supervision, metrics in (("low", "box", {"val_miou": 0.25, "train_loss": 1.5}),
                                       ("high", "mask", {"val_miou": 0.6251234, "pseudo_miou": 0.5}),
                                       ("none", "box", {})):
        run = client.create_run(experiment_id, run_name=name)
        for key, value in {"data.supervision": supervision, "proposals.method": "ss", "assign.lam": "3",
                           "assign.k": "5"}.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    return uri


def table_rows(capsys, uri: str) -> list[list[str]]:
    assert main(["runs", "--experiment", "tbl", "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    return [line.split() for line in lines[2:] if not line.startswith("best run")]


def test_runs_json_and_csv_hold_the_tables_rows(experiment, capsys):
    table = table_rows(capsys, experiment)
    assert [row[0] for row in table] == ["high", "low", "none"]
    assert table[0][:3] == ["high", "FINISHED", "mask"]  # run, status, the one key that differs

    assert main(["runs", "--experiment", "tbl", "--tracking-uri", experiment, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert main(["runs", "--experiment", "tbl", "--tracking-uri", experiment, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))

    assert [r["run"] for r in records] == [r["run"] for r in rows] == [row[0] for row in table]
    assert list(records[0]) == list(rows[0]) == ["run", "run_id", "status", "data.supervision", "val_miou",
                                                 "pseudo_miou", "train_loss", "duration_s"]
    for record, row, cells in zip(records, rows, table):
        assert record["status"] == row["status"] == cells[1] and record["data.supervision"] == row["data.supervision"]
        shown = cells[3]  # the table's val_miou column: 4 decimals, "-" when missing
        assert shown == ("-" if record["val_miou"] is None else f"{record['val_miou']:.4f}")
        assert row["val_miou"] == ("" if record["val_miou"] is None else str(record["val_miou"]))
        assert float(row["duration_s"]) == record["duration_s"] >= 0
    assert records[0]["val_miou"] == pytest.approx(0.6251234)  # unrounded
    assert records[2]["val_miou"] is None and records[2]["train_loss"] is None


def test_runs_json_of_an_empty_experiment_is_an_empty_list(experiment, capsys):
    from mlflow.tracking import MlflowClient

    MlflowClient(experiment).create_experiment("empty")
    assert main(["runs", "--experiment", "empty", "--tracking-uri", experiment, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "--experiment", "empty", "--tracking-uri", experiment, "--csv"]) == 0
    assert capsys.readouterr().out.startswith("run,run_id,status,")


def test_runs_json_and_csv_go_one_at_a_time(capsys):
    with pytest.raises(SystemExit):
        main(["runs", "--experiment", "x", "--json", "--csv"])
    assert "not allowed with argument" in capsys.readouterr().err
