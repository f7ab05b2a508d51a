"""Config loading: defaults, YAML, --set overrides, and one-line errors for bad keys and values."""

import pytest

from boxsup.config import DEFAULTS, flatten, load_config
from boxsup.data.sources import resolve_classes
from boxsup.errors import BoxSupError


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_paper_defaults():
    flat = flatten(DEFAULTS)
    assert (flat["assign.lam"], flat["assign.k"], flat["train.batch_size"], flat["train.lr"],
            flat["train.lr_step"], flat["train.epochs"]) == (3.0, 5, 20, 1e-3, 15, 45)


def test_file_then_overrides(tmp_path):
    path = write(tmp_path, "data: {root: /d, supervision: semi}\nassign: {k: 3}\n")
    cfg = load_config(path, ["assign.k=1", "train.lr=0.01", "assign.update=false", "eval.scales=[0.8, 1, 1.2]"])
    assert cfg["data"]["supervision"] == "semi"
    assert cfg["assign"]["k"] == 1 and cfg["train"]["lr"] == 0.01 and cfg["assign"]["update"] is False
    assert cfg["eval"]["scales"] == [0.8, 1.0, 1.2]
    assert cfg["assign"]["lam"] == 3.0  # untouched default


def test_int_is_accepted_for_float():
    assert load_config(None, ["data.root=/d", "assign.lam=2"])["assign"]["lam"] == 2.0


@pytest.mark.parametrize(
    "override, words",
    [
        ("assign.kk=3", "unknown config key 'assign.kk'"),
        ("lam=3", "did you mean assign.lam"),
        ("assign.k=five", "assign.k: expected int"),
        ("assign.k=0", "must be > 0"),
        ("train.lr=-1", "must be > 0"),
        ("data.supervision=boxes", "not one of mask, box, semi"),
        ("proposals.method=mcg2", "not one of"),
        ("assign.update=3", "expected bool"),
        ("assign.k", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, words):
    with pytest.raises(BoxSupError) as err:
        load_config(None, ["data.root=/d", override])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(BoxSupError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(BoxSupError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed"))
    with pytest.raises(BoxSupError, match=r"cfg.yaml: unknown config key 'train.epoch'"):
        load_config(write(tmp_path, "data: {root: /d}\ntrain: {epoch: 3}\n"))
    with pytest.raises(BoxSupError, match="data.root: not set"):
        load_config(write(tmp_path, "seed: 1\n"))


def test_class_lists(tmp_path):
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    cfg = load_config(None, [f"data.root={tmp_path}", "data.classes=names.txt"])
    assert resolve_classes(cfg) == ("cat", "dog")
    assert len(resolve_classes(load_config(None, ["data.root=/d"]))) == 20
    assert resolve_classes(load_config(None, ["data.root=/d", "data.classes=[a, b]"])) == ("a", "b")
    with pytest.raises(BoxSupError, match="neither 'auto', 'voc' nor an existing file"):
        resolve_classes(load_config(None, [f"data.root={tmp_path}", "data.classes=missing.txt"]))


def test_auto_classes_read_the_dataset_list_or_fall_back_to_voc(tmp_path):
    assert len(resolve_classes(load_config(None, [f"data.root={tmp_path}"]))) == 20
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert resolve_classes(load_config(None, [f"data.root={tmp_path}"])) == ("cat", "dog")


def test_the_label_update_rules_defaults_are_the_default_configs():
    from boxsup.assign.rule import LabelUpdateRule

    cfg = load_config(None, ["data.root=d"])
    rule = LabelUpdateRule.from_config(cfg)
    assert rule == LabelUpdateRule() and rule.form == "robust"  # what a run with the default config uses
    assert rule.score_flip is True and rule.consensus == 1.0 and rule.region_cost == "iou"
    assert rule.greedy_from == cfg["train"]["lr_step"] and rule.first_network_round == cfg["assign"]["warmup_epochs"]


def test_paper_form_is_one_value_away_and_iou_needs_error_costs():
    from boxsup.assign.rule import LabelUpdateRule

    cfg = load_config(None, ["data.root=d", "assign.region_cost=iou", "assign.trust_margin=0.2", "assign.ema=0.5",
                             "assign.void_k=3", "assign.consensus=2",
                             "assign.consensus_margin=0.05", "assign.greedy_round0=false",
                             "assign.score_flip=false", "assign.greedy_after_lr_step=false"])
    assert LabelUpdateRule.from_config(cfg) == LabelUpdateRule(
        lam=3.0, k=5, pixel_cost="error", region_cost="iou", consensus=2.0, consensus_margin=0.05,
        sample_margin=cfg["assign"]["sample_margin"], greedy_round0=False, greedy_from=None, trust_margin=0.2,
        lam_ramp=cfg["assign"]["lam_ramp"], first_network_round=1, ema=0.5, score_flip=False, void_k=3)
    cfg["assign"]["form"] = "paper"
    paper = LabelUpdateRule.paper()
    assert LabelUpdateRule.from_config(cfg) == paper and paper.form == "paper" and paper.void_k == 0
    assert paper.consensus == 0 and paper.sample_margin == float("inf") and paper.region_cost == "mean"
    assert paper.greedy_round0 is False  # the paper draws among the k lowest in every round
    defaults = load_config(None, ["data.root=d"])["assign"]
    assert paper.score_flip is False and defaults["score_flip"] is True
    assert paper.greedy_from is None and defaults["greedy_after_lr_step"] is True
    cfg = load_config(None, ["data.root=d", "assign.form=robust", "assign.region_cost=iou", "assign.pixel_cost=xent"])
    with pytest.raises(BoxSupError, match="assign.region_cost: iou needs assign.pixel_cost: error"):
        LabelUpdateRule.from_config(cfg)
    cfg["assign"]["form"] = "paper"  # the paper's E_r is the two-region mean: any e(p, l)
    assert LabelUpdateRule.from_config(cfg) == LabelUpdateRule.paper(pixel_cost="xent")
