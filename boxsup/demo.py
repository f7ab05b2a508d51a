"""`boxsup demo`: the paper's Table 2 comparison (six rows, one MLflow run each) on the demo set or a user's."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from boxsup.config import load_config, read_yaml_mapping
from boxsup.data.synth import ensure_demo_dataset
from boxsup.errors import BoxSupError
from boxsup.platform.launch import RunResult, run_boxsup
from boxsup.platform.tracking import tracking_uri
from boxsup.utils.storage import open_location

# (name in the table, config overrides)
VARIANTS: list[tuple[str, list[str]]] = [
    ("mask-supervised", ["data.supervision=mask"]),
    ("BoxSup (lambda=3, k=5)", ["data.supervision=box", "proposals.method=ss", "assign.lam=3", "assign.k=5"]),
    ("BoxSup w/o sampling (k=1)", ["data.supervision=box", "proposals.method=ss", "assign.lam=3", "assign.k=1"]),
    # the label update without the network (lambda 0): E_o and the consensus term E_c, greedy, fixed
    ("E_o + E_c alone (no network feedback)", ["data.supervision=box", "proposals.method=ss", "assign.lam=0", "assign.k=1", "assign.update=false"]),
    ("rectangles", ["data.supervision=box", "proposals.method=rectangles", "assign.lam=0", "assign.k=1", "assign.update=false"]),
    ("GrabCut", ["data.supervision=box", "proposals.method=grabcut", "assign.lam=0", "assign.k=1", "assign.update=false"]),
]


def _spread(values: list[float]) -> str:
    """``0.485`` for one value; ``0.485 ± 0.006`` (mean ± sample standard deviation) for several."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def results_table(results: list[tuple[str, list[RunResult], float]]) -> str:
    """Markdown table: val mIoU, its share of the mask-supervised score, pseudo-label mIoU per round.

    Each row holds the runs of one variant, one per seed: with several, every number is their mean
    (± the sample standard deviation for val mIoU), the minutes are the row's total, and the seeds'
    own val scores follow the table.
    """
    means = {name: statistics.mean(r.val_miou for r in runs) for name, runs, _ in results}
    reference = means.get("mask-supervised")
    lines = [
        "| supervision | val mIoU | % of mask | pixel acc. | pseudo-label mIoU, first -> last round | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs, seconds in results:
        share = f"{100 * means[name] / reference:.1f}%" if reference else "-"
        labelled = [r for r in runs if r.pseudo_miou]
        pseudo = "(GT masks)"
        if labelled:
            first = statistics.mean(r.pseudo_miou[0] for r in labelled)
            pseudo = f"{first:.3f} -> {statistics.mean(r.pseudo_miou[-1] for r in labelled):.3f}"
        accuracy = statistics.mean(r.val_pixel_accuracy for r in runs)
        lines.append(f"| {name} | {_spread([r.val_miou for r in runs])} | {share} | {accuracy:.3f} | {pseudo} | "
                     f"{seconds / 60:.1f} |")
    if any(len(runs) > 1 for _, runs, _ in results):
        lines.append("")
        lines += [f"val mIoU by seed, {name}: " + " ".join(f"{r.val_miou:.3f}" for r in runs) for name, runs, _ in results]
    for name, runs, _ in results:
        if len(runs) == 1 and len(runs[0].pseudo_miou) > 1:
            rounds = " ".join(f"{v:.3f}" for v in runs[0].pseudo_miou)
            lines.append(f"\npseudo-label mIoU by round, {name}: {rounds}")
    return "\n".join(lines)


def demo_data_settings(config: str | Path, data_dir: Path | None, overrides: list[str],
                       write: bool = True) -> tuple[list[str], int]:
    """The ``--set`` settings that point every row at the data, and the number of training sources.

    ``data_dir`` (or, without it, the config's ``data.root``) is a VOC-layout root; the synthetic demo
    set is written there (unless ``write`` is False: ``--print-config``) only when it is absent or empty,
    never into a folder that holds anything.
    A config with ``data.sources`` (COCO, SBD, several sources) is used as it is, without ``data_dir``.
    """
    data = read_yaml_mapping(config, "config file", "config keys").get("data") or {}
    if data.get("sources"):
        if data_dir is not None:
            raise BoxSupError(f"demo: --data {data_dir} is a VOC-layout root, but {config} reads data.sources; "
                              "drop --data (the rows then train on the config's sources)")
        return [], len(data["sources"])  # --set can change a source's fields, not their number
    data_dir = Path(data_dir or data.get("root") or "demo_data")
    if write:
        ensure_demo_dataset(data_dir)
    return [f"data.root={data_dir}"], 0


def row_settings(variant: list[str], n_sources: int) -> list[str]:
    """A row's settings; with ``data.sources``, its ``data.supervision`` set on every training source."""
    if not n_sources:
        return variant
    out = []
    for setting in variant:
        if setting.startswith("data.supervision="):
            value = setting.split("=", 1)[1]
            out += [f"data.sources[{i}].supervision={value}" for i in range(n_sources)]
        else:
            out.append(setting)
    return out


def run_demo(
    config: str | Path, data_dir: Path | None = None, overrides: list[str] | None = None, seeds: int = 1
) -> list[tuple[str, list[RunResult], float]]:
    """Train every variant (``seeds`` times, with the config's seed and the next ones) on the data
    (``demo_data_settings``: the demo set is written first where it is absent), print and save the
    comparison table."""
    if seeds < 1:
        raise BoxSupError(f"demo: --seeds must be at least 1, got {seeds}")
    data_settings, n_sources = demo_data_settings(config, data_dir, overrides or [])
    first_seed = load_config(config, [*data_settings, *(overrides or [])])["seed"]
    results = []
    for name, variant in VARIANTS:
        print(f"\n=== {name} ===", flush=True)
        slug = re.sub(r"[^a-z0-9_]+", "-", name.split(" (")[0].lower().replace("/", "")).strip("-")
        runs, started = [], time.perf_counter()
        settings = [*data_settings, f"tracking.run_name=demo-{slug}", *row_settings(variant, n_sources),
                    *(overrides or [])]
        for seed in range(first_seed, first_seed + seeds):
            per_seed = []  # one seed: the settings as given (a --set tracking.run_name stands)
            if seeds > 1:
                print(f"--- seed {seed} ---", flush=True)
                per_seed = [f"seed={seed}", f"tracking.run_name=demo-{slug}-seed{seed}"]
            cfg = load_config(config, [*settings, *per_seed])
            runs.append(run_boxsup(cfg))
        results.append((name, runs, time.perf_counter() - started))
    table = results_table(results)
    print("\n" + table)
    output = open_location(cfg["output"]["dir"])  # a local directory or a URI
    output.write_bytes("demo_results.md", (table + "\n").encode())
    print(f"\n(saved to {output.path('demo_results.md')}; every run is in MLflow: `mlflow ui --backend-store-uri {tracking_uri(cfg['tracking']['uri'])}`)")
    return results
