"""``boxsup demo --extra-boxes``: the paper's point that extra box-annotated images help (Table 4), on the demo data.

Two runs on the demo set: masks on 1/6 of the training images only, against the same masks plus
boxes for the other 5/6 read from a COCO-format copy of those images (so the run mixes a VOC source
and a COCO source, as ``configs/voc_coco.yaml`` does at full scale). Both score on the demo's val split.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from boxsup.config import check_data_section, load_config
from boxsup.data.dataset import read_list_file
from boxsup.data.synth import ensure_demo_dataset
from boxsup.data.to_coco import write_coco_copy
from boxsup.data.voc import write_split
from boxsup.platform.launch import RunResult, run_boxsup
from boxsup.utils.storage import open_location

MASKED_SPLIT, BOXED_SPLIT = "train_masked", "train_boxes"  # lists written into the demo set


def split_masked_and_boxed(data_dir: Path, seed: int, fraction: float = 1 / 6) -> tuple[list[str], list[str]]:
    """A seeded ``fraction`` of the training ids (kept with masks) and the rest (boxes only), written as lists."""
    ids = read_list_file(data_dir / "ImageSets" / "Segmentation" / "train.txt")
    order = np.random.default_rng([seed, 6]).permutation(sorted(ids)).tolist()
    cut = int(round(fraction * len(ids)))
    masked, boxed = sorted(order[:cut]), sorted(order[cut:])
    write_split(data_dir, MASKED_SPLIT, masked)
    write_split(data_dir, BOXED_SPLIT, boxed)
    return masked, boxed


def extra_boxes_configs(config: str | Path, data_dir: Path, coco_dir: Path,
                        overrides: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """The two runs' configs: VOC masks on the masked list; the same plus the COCO copy's boxes."""
    base = load_config(config, [f"data.root={data_dir}", *(overrides or [])])
    val = {"name": "demo_val", "format": "voc", "root": str(data_dir), "split": base["data"]["val_split"]}
    masks = {"name": "demo_masks", "format": "voc", "root": str(data_dir), "split": MASKED_SPLIT, "supervision": "mask"}
    boxes = {"name": "demo_coco_boxes", "format": "coco", "root": str(coco_dir), "supervision": "box",
             "annotations": f"annotations/instances_{BOXED_SPLIT}.json", "images": BOXED_SPLIT}
    runs = []
    for name, sources in (("masks on 1/6 only", [masks]), ("+ COCO boxes on the other 5/6", [masks, boxes])):
        cfg = {**base, "data": {**base["data"], "root": None, "sources": sources, "val": val},
               "tracking": {**base["tracking"], "run_name": f"extra-boxes-{len(sources)}-sources"}}
        check_data_section(cfg, {})
        runs.append((name, cfg))
    return runs


def run_extra_boxes_demo(config: str | Path, data_dir: Path, overrides: list[str] | None = None) -> list[tuple[str, RunResult, float]]:
    """Make the demo data, its lists and the COCO copy if absent; train both runs; print and save the table."""
    ensure_demo_dataset(data_dir)
    coco_dir = data_dir.parent / f"{data_dir.name}-coco-boxes"
    runs = extra_boxes_configs(config, data_dir, coco_dir, overrides)  # checked before any file is written
    masked, boxed = split_masked_and_boxed(data_dir, runs[0][1]["seed"])
    if not (coco_dir / "annotations" / f"instances_{BOXED_SPLIT}.json").is_file():
        write_coco_copy(data_dir, coco_dir, [BOXED_SPLIT])
    print(f"{len(masked)} training images keep their masks; {len(boxed)} more have boxes only, read from {coco_dir}")
    results = []
    for name, cfg in runs:
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        results.append((name, run_boxsup(cfg), time.perf_counter() - started))
    lines = ["| training data | val mIoU | pixel acc. | minutes |", "|---|---|---|---|"]
    lines += [f"| {name} | {r.val_miou:.3f} | {r.val_pixel_accuracy:.3f} | {s / 60:.1f} |" for name, r, s in results]
    table = "\n".join(lines)
    print("\n" + table)
    output = open_location(cfg["output"]["dir"])  # a local directory or a URI
    output.write_bytes("demo_extra_boxes_results.md", (table + "\n").encode())
    print(f"\n(saved to {output.path('demo_extra_boxes_results.md')})")
    return results
