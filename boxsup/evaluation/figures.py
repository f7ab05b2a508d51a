"""Pictures people would rather look at than read: confusion matrices and label evolution."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from boxsup.data.voc import voc_palette  # noqa: E402
from boxsup.utils.files import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from boxsup.evaluation.trimap import TrimapScores

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """Label ids to VOC palette colours, (H, W, 3) uint8."""
    return _PALETTE[label_map]


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def confusion_figure(matrix: np.ndarray, names: list[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (rows: GT, columns: prediction)."""
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = 1.0 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(len(names)):
        for j in range(len(names)):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def label_evolution_figure(rows: list[tuple[str, np.ndarray, np.ndarray | None, list[tuple[str, np.ndarray]]]], path: str | Path) -> None:
    """One row per image: the image, its hidden GT (if any), then label maps of chosen rounds (Fig. 3)."""
    n_cols = 2 + max(len(r[3]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.2 * n_cols, 2.2 * len(rows)), squeeze=False)
    for r, (image_id, image, gt, rounds) in enumerate(rows):
        panels = [(image_id, image), ("GT (hidden)", colorize(gt) if gt is not None else None)]
        panels += [(title, colorize(label)) for title, label in rounds]
        for c in range(n_cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(panels) and panels[c][1] is not None:
                ax.imshow(panels[c][1])
                ax.set_title(panels[c][0], fontsize=8)
    _save(fig, path)


def trimap_figure(curves: dict[str, list[TrimapScores]], path: str | Path) -> None:
    """Mean IoU against trimap band width, one colour per model: interior solid, boundary dashed (Fig. 4)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for index, (label, scores) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        widths = [s.width for s in scores]
        ax.plot(widths, [s.interior.miou for s in scores], "-o", color=colour, markersize=4, label=f"{label} interior")
        ax.plot(widths, [s.boundary.miou for s in scores], "--s", color=colour, markersize=4, label=f"{label} boundary")
    ax.set_xticks(sorted({s.width for scores in curves.values() for s in scores}))
    ax.set_xlabel("trimap band width (px)")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
