"""`boxsup demo`: the paper's Table 2 comparison on the synthetic demo dataset, one MLflow run each."""

from __future__ import annotations

import re
import time
from pathlib import Path

from boxsup.config import load_config
from boxsup.data.synth import generate_dataset
from boxsup.platform.tracking import tracking_uri
from boxsup.platform.launch import RunResult, run_boxsup
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


def results_table(results: list[tuple[str, RunResult, float]]) -> str:
    """Markdown table: val mIoU, its share of the mask-supervised score, pseudo-label mIoU per round."""
    reference = next((r.val_miou for name, r, _ in results if name == "mask-supervised"), None)
    lines = [
        "| supervision | val mIoU | % of mask | pixel acc. | pseudo-label mIoU, first -> last round | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for name, r, seconds in results:
        share = f"{100 * r.val_miou / reference:.1f}%" if reference else "-"
        pseudo = f"{r.pseudo_miou[0]:.3f} -> {r.pseudo_miou[-1]:.3f}" if r.pseudo_miou else "(GT masks)"
        lines.append(f"| {name} | {r.val_miou:.3f} | {share} | {r.val_pixel_accuracy:.3f} | {pseudo} | {seconds / 60:.1f} |")
    for name, r, _ in results:
        if len(r.pseudo_miou) > 1:
            rounds = " ".join(f"{v:.3f}" for v in r.pseudo_miou)
            lines.append(f"\npseudo-label mIoU by round, {name}: {rounds}")
    return "\n".join(lines)


def run_demo(config: str | Path, data_dir: Path, overrides: list[str] | None = None) -> list[tuple[str, RunResult, float]]:
    """Make the demo data if absent, train every variant, print and save the comparison table."""
    if not (data_dir / "ImageSets" / "Segmentation" / "train.txt").is_file():
        print(f"writing the synthetic demo dataset to {data_dir}")
        generate_dataset(data_dir)
    results = []
    for name, variant in VARIANTS:
        print(f"\n=== {name} ===", flush=True)
        slug = re.sub(r"[^a-z0-9_]+", "-", name.split(" (")[0].lower().replace("/", "")).strip("-")
        cfg = load_config(config, [f"data.root={data_dir}", f"tracking.run_name=demo-{slug}", *variant, *(overrides or [])])
        started = time.perf_counter()
        result = run_boxsup(cfg)
        results.append((name, result, time.perf_counter() - started))
    table = results_table(results)
    print("\n" + table)
    output = open_location(cfg["output"]["dir"])  # a local directory or a URI
    output.write_bytes("demo_results.md", (table + "\n").encode())
    print(f"\n(saved to {output.path('demo_results.md')}; every run is in MLflow: `mlflow ui --backend-store-uri {tracking_uri(cfg['tracking']['uri'])}`)")
    return results
