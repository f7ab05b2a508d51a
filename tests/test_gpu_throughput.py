"""The GPU throughput benchmark's tiny mode (CPU, seconds): every row it promises is measured."""

import importlib.util
import json
import math
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_reports_every_row_with_a_positive_rate(tmp_path):
    bench = load_benchmark()
    out = tmp_path / "tiny.json"
    assert bench.main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    sizes = bench.TINY
    rows = result["rows"]
    promised = {("a", b, p, layout) for b in sizes.backbones for p in sizes.precisions for layout in ("NCHW", "channels-last")}
    promised |= {(part, b, p, "channels-last") for b in sizes.backbones for p in sizes.precisions for part in ("b", "c-warm")}
    promised |= {("c-cold", b, sizes.precisions[0], "channels-last") for b in sizes.backbones}
    promised |= {("e", b, p, "channels-last") for b in sizes.backbones for p in sizes.precisions}  # one each on a CPU
    measured = {(r["part"], r["backbone"], r["precision"], r["layout"]) for r in rows if r["part"] != "d"}
    assert measured == promised
    assert sorted(r["extra"]["workers"] for r in rows if r["part"] == "d") == sorted(sizes.loader_workers)
    for row in rows:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0, row
    for row in rows:
        if row["part"] == "b":
            assert math.isfinite(row["extra"]["loss"]), row
        if row["part"] in ("a", "b", "e"):
            assert row["mfu"] > 0, row
        if row["part"].startswith("c"):  # the round's time, taken apart
            assert 0 <= row["extra"]["loader_wait_seconds"] <= row["extra"]["seconds"], row
            assert row["extra"]["network_and_reduction_seconds"] > 0, row
    assert {p["precision"] for p in result["projections"]} == set(sizes.precisions)
    assert result["meta"]["peak_flops"] == bench.H100_BF16_DENSE and result["goals"]
    assert all(math.isfinite(p["network_alone_share"]) for p in result["projections"])
    profile = result["profiles"][f"small {sizes.precisions[-1]}"]
    assert profile and all(0 < op["share"] <= 1 for op in profile)
