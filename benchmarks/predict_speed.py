"""Prediction speed per backbone on the CPU: images per second at VOC's typical size.

    python benchmarks/predict_speed.py --threads 2 --runs 5

Times what ``boxsup predict`` and evaluation do per image: single scale, batch 1, eval mode,
no gradients, the model placed by ``on_device`` (channels-last weights on a CPU), through
:func:`boxsup.evaluation.inference.predict_label_map` (normalise, forward, softmax, argmax).
Random weights: the speed does not depend on them. Each row also gives the network's
multiply-accumulates per image (counted by torch's FlopCounterMode on the meta device) and its
parameters. Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from boxsup.evaluation.inference import predict_label_map
from boxsup.models import BACKBONES, OUTPUT_STRIDES, build_model, on_device


def seconds_per_image(backbone: str, output_stride: int, image: np.ndarray, warmup: int, runs: int) -> list[float]:
    """Wall seconds of each of ``runs`` predictions of ``image`` after ``warmup`` untimed ones."""
    device = torch.device("cpu")
    model = on_device(build_model(backbone, num_classes=21, weights="none", output_stride=output_stride), device)
    for _ in range(warmup):
        predict_label_map(model, image, device=device)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict_label_map(model, image, device=device)
        times.append(time.perf_counter() - started)
    return times


def cost(backbone: str, output_stride: int, height: int, width: int) -> tuple[float, float]:
    """(billions of multiply-accumulates per image, millions of parameters), counted without running on data."""
    with torch.device("meta"):
        model = build_model(backbone, num_classes=21, weights="none", output_stride=output_stride).eval()
        images = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops() / 2e9, sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    print(f"`python {' '.join(['benchmarks/predict_speed.py', *sys.argv[1:]])}`, {datetime.date.today()}, "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"{args.width}x{args.height}, batch 1, {args.warmup} warm-up and {args.runs} timed runs\n")
    print("| backbone | output stride | images/s | median s/image | min s/image | GMACs/image | parameters (M) |")
    print("|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for stride in OUTPUT_STRIDES[backbone]:
            times = seconds_per_image(backbone, stride, image, args.warmup, args.runs)
            macs, params = cost(backbone, stride, args.height, args.width)
            print(f"| {backbone} | {stride} | {len(times) / sum(times):.2f} | {statistics.median(times):.3f} | "
                  f"{min(times):.3f} | {macs:.1f} | {params:.1f} |", flush=True)


if __name__ == "__main__":
    main()
