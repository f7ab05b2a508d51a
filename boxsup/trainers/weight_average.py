"""The network that scores candidates in a label update: the last weights, or their average over epochs.

An exponential moving average of the weights, taken after every epoch (decay d: w_avg <- d w_avg +
(1 - d) w), changes less from one epoch to the next than the weights themselves, so one epoch's
over-fit to its own labels moves the next choice less. It starts at the weights after the first
epoch and is part of the checkpoint, so a restarted run scores with the same numbers.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """An EMA of a model's weights (float tensors; integer buffers are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.started = False

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's weights after an epoch into the average."""
        mine = self.model.state_dict()
        for name, value in model.state_dict().items():
            if self.started and value.is_floating_point():
                mine[name].mul_(self.decay).add_(value, alpha=1 - self.decay)
            else:
                mine[name].copy_(value)
        self.started = True

    def state_dict(self) -> dict:
        return {"weights": self.model.state_dict(), "started": self.started}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.started = bool(state["started"])
