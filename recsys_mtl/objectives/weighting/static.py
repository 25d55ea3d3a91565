"""Static weights: total = sum_t w_t * L_t with each task's configured `weight`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recsys_mtl.objectives.weighting.base import Losses, Weighting, weighted_sum


class StaticWeighting(Weighting):
    normalisation = "task"

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return weighted_sum(losses, self.task_weights), dict(self.task_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.task_weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task_weights = dict(state["weights"])
