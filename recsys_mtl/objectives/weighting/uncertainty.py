"""Uncertainty weighting (Kendall, Gal and Cipolla, 2018, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics").

Each task has a learnable log-variance s_t = log sigma_t^2 and the standard form
    regression:      0.5 * exp(-s_t) * L_t + 0.5 * s_t
    classification:        exp(-s_t) * L_t + 0.5 * s_t
so the reported weight is 0.5 * exp(-s_t) (regression) or exp(-s_t). For a fixed
loss both forms are minimised at weight = 0.5 / L_t (weighted loss 0.5): a task whose
loss is k times larger settles at a k times smaller weight. The s_t start at 0 and are
trained by the model's optimiser (no weight decay).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recsys_mtl.config import ObjectivesSection, TaskConfig
from recsys_mtl.objectives.weighting.base import Losses, Weighting


class UncertaintyWeighting(Weighting):
    normalisation = "none"

    def __init__(
        self, tasks: dict[str, TaskConfig], options: ObjectivesSection | None = None
    ) -> None:
        super().__init__(tasks, options)
        options = self.options
        self.log_variance = nn.Parameter(torch.zeros(len(tasks)))
        self.scale = torch.tensor(
            [0.5 if task.kind == "regression" else 1.0 for task in tasks.values()]
        )

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.scale = self.scale.to(self.log_variance.device)  # no copy once there
        weights = self.scale * torch.exp(-self.log_variance)
        stacked = torch.stack(list(losses.values()))
        total = (weights * stacked).sum() + 0.5 * self.log_variance.sum()
        return total, {n: float(w) for n, w in zip(losses, weights.detach(), strict=True)}

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_variance]

    def state_dict(self) -> dict[str, Any]:
        return {"log_variance": self.log_variance.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_variance.copy_(state["log_variance"])
