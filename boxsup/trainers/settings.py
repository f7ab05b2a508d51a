"""What a worker's loop reads from the run config, as typed values made once from the validated config.

``RunSettings.from_config(cfg)`` is built where the job is made (``TrainingJob``); the loop, the
label round and the evaluation read its fields instead of string keys. The data and model sections
stay the mappings their builders (``boxsup.data.sources``, ``boxsup.models``) take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from boxsup.assign.rule import LabelUpdateRule
from boxsup.evaluation.crf import CRFParams


@dataclass(frozen=True)
class TrainSettings:
    """``train.*`` (and ``data.crop_size``): the SGD schedule, the loader and the arithmetic."""

    epochs: int
    batch_size: int
    lr: float
    lr_step: int
    lr_gamma: float
    momentum: float
    weight_decay: float
    crop_size: int
    num_threads: int  # 0: torch's default
    loader_workers: int | None  # None: 4 on a GPU, 0 on a CPU
    label_cache_mb: float
    precision: str  # auto | bf16 | fp16 | fp32
    compile: bool
    deterministic: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "TrainSettings":
        t = cfg["train"]
        return cls(epochs=int(t["epochs"]), batch_size=int(t["batch_size"]), lr=float(t["lr"]), lr_step=int(t["lr_step"]),
                   lr_gamma=float(t["lr_gamma"]), momentum=float(t["momentum"]), weight_decay=float(t["weight_decay"]),
                   crop_size=int(cfg["data"]["crop_size"]), num_threads=int(t["num_threads"]),
                   loader_workers=t["loader_workers"], label_cache_mb=float(t["label_cache_mb"]),
                   precision=precision_setting(t), compile=bool(t.get("compile", False)),
                   deterministic=bool(t.get("deterministic", False)))  # keys a run recorded before them lacks

    def batch_per_worker(self, world: int) -> int:
        """Each of ``world`` data-parallel workers' share of ``batch_size`` (at least 1)."""
        return max(1, self.batch_size // world)


def precision_setting(train: dict[str, Any]) -> str:
    """``train.precision``; a run recorded before it existed has ``train.amp`` (true: auto, false: fp32)."""
    return train.get("precision") or ("auto" if train.get("amp", True) else "fp32")


@dataclass(frozen=True)
class EvalSettings:
    """``eval.*``: how often and how validation is scored."""

    every: int
    scales: tuple[float, ...]
    crf: bool
    crf_params: CRFParams

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EvalSettings":
        e = cfg["eval"]
        return cls(int(e["every"]), tuple(float(s) for s in e["scales"]), bool(e["crf"]), CRFParams.of_config(cfg))


@dataclass(frozen=True)
class LabelSchedule:
    """Which epochs start a label round, which rounds the figures show, and which rounds the label store keeps.

    Every round writes one label map per box image: at 144k images and 45 rounds that is 6.5M files.
    The store keeps what resuming and the figures need, and deletes older rounds only once the
    checkpoint that no longer reads them is saved (``output.keep_label_rounds``).
    """

    epochs: int
    update: bool  # assign.update: false keeps round 0's labels for the whole run
    warmup_epochs: int
    keep_label_rounds: int | str | None  # None: the round in use; N: it and the N - 1 before; "all"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "LabelSchedule":
        a = cfg["assign"]
        return cls(int(cfg["train"]["epochs"]), bool(a["update"]), int(a["warmup_epochs"]),
                   cfg["output"]["keep_label_rounds"])

    def updates_in(self, epoch: int) -> bool:
        """Whether ``epoch`` starts with a label round."""
        return epoch == 0 or (self.update and epoch >= self.warmup_epochs)

    def planned_rounds(self) -> list[int]:
        """The epochs that start with a label round: epoch 0 (E_o alone), then every epoch from the warm-up on."""
        return [epoch for epoch in range(self.epochs) if self.updates_in(epoch)] or [0]

    def figure_rounds(self) -> list[int]:
        """The rounds the label-evolution figure shows: the first, the middle and the last planned."""
        rounds = self.planned_rounds()
        return sorted({rounds[0], rounds[len(rounds) // 2], rounds[-1]})

    def rounds_to_delete(self, stored: list[int], in_use: int) -> list[int]:
        """Stored rounds the policy lets go now that round ``in_use``'s checkpoint is saved.

        Kept: ``in_use`` (a resume reads it) and the rounds before it that ``keep_label_rounds`` asks
        for (None: none, N: the N - 1 before it, ``all``: every one), the figures' rounds, and any later
        round (written, not yet checkpointed).
        """
        if self.keep_label_rounds == "all":
            return []
        recent = 1 if self.keep_label_rounds is None else int(self.keep_label_rounds)
        older = sorted(r for r in stored if r < in_use)
        kept_recent = set(older[len(older) - (recent - 1):]) if recent > 1 else set()
        protected = set(self.figure_rounds()) | kept_recent | {in_use}
        return [r for r in older if r not in protected]


@dataclass(frozen=True)
class RunSettings:
    """Everything a worker's loop reads from the run config, typed."""

    seed: int
    train: TrainSettings
    eval: EvalSettings
    rule: LabelUpdateRule
    schedule: LabelSchedule

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "RunSettings":
        """From a validated run config (``boxsup.config.load_config`` or a run record's)."""
        return cls(int(cfg["seed"]), TrainSettings.from_config(cfg), EvalSettings.from_config(cfg),
                   LabelUpdateRule.from_config(cfg), LabelSchedule.from_config(cfg))
