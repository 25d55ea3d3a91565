"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, 2018, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks").

Learnable weights w_t (starting at 1) are moved so that each task's gradient norm on
the shared representation, G_t = w_t * ||dL_t/dz||, approaches
    target_t = mean_i(G_i) * r_t^alpha,   r_t = (L_t / L_t(0)) / mean_i(L_i / L_i(0)),
i.e. tasks that train more slowly (relative to their first loss) get larger gradients.
The gradient-norm loss sum_t |G_t - target_t| (targets held constant, as in the paper)
updates the w_t with their own Adam step (`objectives.gradnorm_lr`); the weights are
then renormalised to sum to T. z is the shared representation (the encoded users and
items), not the embedding tables: one cheap gradient per task per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recsys_mtl.config import ObjectivesSection, TaskConfig
from recsys_mtl.objectives.weighting.base import (
    Losses,
    Weighting,
    detached_losses,
    representation_gradients,
)


class GradNormWeighting(Weighting):
    normalisation = "sum_to_tasks"
    reads_shared_gradients = True

    def __init__(
        self, tasks: dict[str, TaskConfig], options: ObjectivesSection | None = None
    ) -> None:
        super().__init__(tasks, options)
        options = self.options
        self.weights = nn.Parameter(torch.ones(len(tasks)))
        self.optimizer = torch.optim.Adam([self.weights], lr=options.gradnorm_lr)
        self.initial_losses: torch.Tensor | None = None

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        used = self.weights.detach().clone()
        total = (used * torch.stack(list(losses.values()))).sum()
        values = detached_losses(losses)
        if self.initial_losses is None:
            self.initial_losses = values.clamp(min=1e-12)
        norms = torch.stack([g.norm() for g in representation_gradients(losses, shared)])
        self.update(norms, values)
        return total, {n: float(w) for n, w in zip(losses, used, strict=True)}

    def update(self, norms: torch.Tensor, values: torch.Tensor) -> None:
        """One GradNorm step from the tasks' gradient norms (T,) and losses (T,)."""
        assert self.initial_losses is not None
        relative = values / self.initial_losses
        rate = relative / relative.mean().clamp(min=1e-12)
        with torch.enable_grad():
            grad_norms = self.weights * norms
            target = (grad_norms.mean() * rate**self.options.gradnorm_alpha).detach()
            gap = (grad_norms - target).abs().sum()
            self.optimizer.zero_grad(set_to_none=True)
            gap.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.weights.clamp_(min=1e-3)
            self.weights.mul_(len(self.weights) / self.weights.sum())

    def synced_tensors(self) -> list[torch.Tensor]:
        return [self.weights]

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "initial_losses": self.initial_losses,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weights.copy_(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.initial_losses = state["initial_losses"]
