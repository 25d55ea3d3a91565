"""Dynamic weight average (Liu, Johns and Davison, 2019, "End-to-End Multi-Task Learning
with Attention").

    w_t(k) = T * exp(r_t(k-1) / temperature) / sum_i exp(r_i(k-1) / temperature),
    r_t(k-1) = L_t(k-1) / L_t(k-2)

from each task's mean training loss over the previous two epochs; w_t = 1 for the first
two epochs. A task whose loss falls more slowly gets more weight; scaling a task's loss
by a constant leaves the ratios, hence the weights, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from recsys_mtl.objectives.weighting.base import Losses, Weighting, weighted_sum


class DynamicWeightAverage(Weighting):
    normalisation = "sum_to_tasks"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_losses: list[dict[str, float]] = []  # the last two epochs' means
        self.weights = {name: 1.0 for name in self.tasks}

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return weighted_sum(losses, self.weights), dict(self.weights)

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None:
        self.epoch_losses = [*self.epoch_losses, dict(epoch_losses)][-2:]
        if len(self.epoch_losses) == 2:
            before, last = self.epoch_losses
            # a few floats on the host: no tensor, so no device to get wrong
            ratios = np.array([last[n] / max(before[n], 1e-12) for n in self.tasks])
            scaled = ratios / self.options.dwa_temperature
            weights = np.exp(scaled - scaled.max())
            weights *= len(ratios) / weights.sum()
            self.weights = {n: float(w) for n, w in zip(self.tasks, weights, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_losses": list(self.epoch_losses), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_losses = list(state["epoch_losses"])
        self.weights = dict(state["weights"])
