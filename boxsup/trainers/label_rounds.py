"""Which epochs start a label round, which rounds the figures show, and which rounds the label store keeps.

Every round writes one label map per box image: at 144k images and 45 rounds that is 6.5M files.
The store keeps what resuming and the figures need, and deletes older rounds only once the
checkpoint that no longer reads them is saved (``output.keep_label_rounds``).
"""

from __future__ import annotations

from typing import Any


def planned_rounds(cfg: dict[str, Any]) -> list[int]:
    """The epochs that start with a label round: epoch 0 (E_o alone), then every epoch from the warm-up on."""
    t, a = cfg["train"], cfg["assign"]
    later = range(max(1, a["warmup_epochs"]), t["epochs"]) if a["update"] else range(0)
    return [0, *later]


def figure_rounds(rounds: list[int]) -> list[int]:
    """The rounds the label-evolution figure shows: the first, the middle and the last."""
    return sorted({rounds[0], rounds[len(rounds) // 2], rounds[-1]}) if rounds else []


def rounds_to_delete(cfg: dict[str, Any], stored: list[int], in_use: int) -> list[int]:
    """Stored rounds the policy lets go now that round ``in_use``'s checkpoint is saved.

    Kept: ``in_use`` (a resume reads it) and the rounds before it that ``keep_label_rounds`` asks
    for (null: none, N: the N - 1 before it, ``all``: every one), the figures' rounds, and any later
    round (written, not yet checkpointed).
    """
    keep = cfg["output"]["keep_label_rounds"]
    if keep == "all":
        return []
    recent = 1 if keep is None else int(keep)
    older = sorted(r for r in stored if r < in_use)
    kept_recent = set(older[len(older) - (recent - 1):]) if recent > 1 else set()
    protected = set(figure_rounds(planned_rounds(cfg))) | kept_recent | {in_use}
    return [r for r in older if r not in protected]
