"""The label-update rule: the form of the E-step's costs and draw, with every knob of it, in one value.

``LabelUpdateRule()`` is the robust form a run with the default config uses (its field defaults are
the one home of the rule's defaults: ``config.DEFAULTS`` reads them); ``LabelUpdateRule.paper()`` is the
paper's (Sec. 4.3); ``LabelUpdateRule.from_config(cfg)`` the rule a run's validated config asks for,
built once where the run starts. Plain values, cheap to ship to the assignment actors
(``AssignmentSpec.rule``). ``costs.py`` describes the two forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from boxsup.errors import BoxSupError

# The knobs the paper form fixes (Sec. 4.3: every candidate, the two-region mean E_r, no E_c, the
# plain k lowest in every round, lambda from the first round the network scores, the last weights,
# no void); lam, k, pixel_cost and first_network_round are the config's in both forms.
PAPER_KNOBS: dict[str, Any] = {"region_cost": "mean", "consensus": 0.0, "consensus_margin": 0.1,
                               "sample_margin": math.inf, "greedy_round0": False, "greedy_from": None,
                               "trust_margin": 1.0, "lam_ramp": 0, "ema": 0.0, "void_k": 0, "score_flip": False}


@dataclass(frozen=True)
class LabelUpdateRule:
    """How each round's labels are chosen: cost = E_o + consensus E_c + lambda_r E_r, then a draw among k."""

    lam: float = 3.0  # lambda: weight of E_r, the network's word
    k: int = 5  # each box's candidate is drawn among its k lowest costs
    pixel_cost: str = "error"  # e(p, l) in E_r: error = 1 - P(l|p), xent = -log P(l|p) (the workers compute it)
    region_cost: str = "iou"  # E_r: iou (1 - soft IoU with the network's mask) | mean (two-region mean of e)
    consensus: float = 1.0  # mu: weight of E_c, the disagreement with the box's near-best candidates (0: none)
    consensus_margin: float = 0.1  # the near-best: E_o within this of the box's best
    sample_margin: float = 0.1  # draw only among candidates within this of the lowest cost (inf: the plain k lowest)
    greedy_round0: bool = False  # without the network's costs (round 0) take each box's lowest cost, not a draw
    greedy_from: int | None = 15  # rounds from this one on take the lowest cost (None: never; a run: train.lr_step)
    trust_margin: float = 1.0  # candidates with E_o within this of the box's best may be chosen (1: every one)
    lam_ramp: int = 0  # rounds over which lambda grows linearly from first_network_round (0: at once)
    first_network_round: int = 1  # the first round the network scores (assign.warmup_epochs)
    ema: float = 0.0  # the network scoring candidates: EMA of the weights with this decay (0: the last weights)
    score_flip: bool = True  # the network scores with P averaged over the image and its mirror image
    void_k: int = 0  # > 1: pixels on which a box's void_k near-best candidates disagree are painted void

    def __post_init__(self) -> None:
        if self.region_cost not in ("mean", "iou"):
            raise ValueError(f"region_cost {self.region_cost!r}: expected 'mean' or 'iou'")
        if self.pixel_cost not in ("error", "xent"):
            raise ValueError(f"pixel_cost {self.pixel_cost!r}: expected 'error' or 'xent'")
        if self.region_cost == "iou" and self.pixel_cost != "error":
            raise BoxSupError("config key assign.region_cost: iou needs assign.pixel_cost: error (it reads 1 - e as P)")

    @classmethod
    def paper(cls, lam: float = 3.0, k: int = 5, pixel_cost: str = "error",
              first_network_round: int = 1) -> "LabelUpdateRule":
        """The paper's form (``assign.form: paper``) with these values of the knobs it leaves free."""
        return cls(lam=lam, k=k, pixel_cost=pixel_cost, first_network_round=first_network_round, **PAPER_KNOBS)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "LabelUpdateRule":
        """The rule of a validated run config (``assign.*`` and ``train.lr_step``).

        ``assign.form: paper`` is the paper's form whatever the robust form's keys say; ``robust`` takes
        them as set. Refused (``BoxSupError``): E_r as a soft IoU with ``pixel_cost: xent`` (it needs e = 1 - P).
        """
        a = cfg["assign"]
        free = {"lam": float(a["lam"]), "k": int(a["k"]), "pixel_cost": a["pixel_cost"],
                "first_network_round": int(a["warmup_epochs"])}
        if a["form"] == "paper":
            return cls.paper(**free)
        return cls(**free, region_cost=a["region_cost"], consensus=float(a["consensus"]),
                   consensus_margin=float(a["consensus_margin"]),
                   sample_margin=math.inf if a["sample_margin"] is None else float(a["sample_margin"]),
                   greedy_round0=bool(a["greedy_round0"]),
                   greedy_from=int(cfg["train"]["lr_step"]) if a["greedy_after_lr_step"] else None,
                   trust_margin=float(a["trust_margin"]), lam_ramp=int(a["lam_ramp"]), ema=float(a["ema"]),
                   score_flip=bool(a["score_flip"]), void_k=int(a["void_k"]))

    @property
    def form(self) -> str:
        """``paper`` when every knob the paper fixes has the paper's value, else ``robust``."""
        return "paper" if all(getattr(self, name) == value for name, value in PAPER_KNOBS.items()) else "robust"

    def lam_at(self, round_index: int) -> float:
        """lambda of round ``round_index`` (``lam_ramp``: growing from ``first_network_round``)."""
        return ramped_lambda(self.lam, round_index, self.first_network_round, self.lam_ramp)

    def k_at(self, round_index: int, scored: bool) -> int:
        """Among how many lowest costs round ``round_index`` draws (1: it takes the lowest); ``scored``:
        the network's costs are given (not round 0's E_o alone)."""
        greedy = (not scored and self.greedy_round0) or (self.greedy_from is not None and round_index >= self.greedy_from)
        return 1 if greedy else self.k


def ramped_lambda(lam: float, round_index: int, first_network_round: int, ramp_rounds: int) -> float:
    """lambda of a round: it grows linearly over ``ramp_rounds`` rounds from the first the network scores.

    lambda_r = lam * min(1, (r - r_0 + 1) / R) for r >= r_0 (R = 0: lam at once); the young network's
    word counts little, a trained one's fully.
    """
    if ramp_rounds <= 0:
        return lam
    return lam * min(1.0, max(0, round_index - first_network_round + 1) / ramp_rounds)
