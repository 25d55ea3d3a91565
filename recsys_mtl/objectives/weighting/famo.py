"""FAMO (Liu, Liang, Liu, Stone and Liu, 2023, "FAMO: Fast Adaptive Multitask
Optimization").

Task logits xi (starting at 0) give z = softmax(xi). Each step minimises
    sum_t z_t * log(L_t) / c,   c = sum_t z_t / L_t   (held constant),
so the effective weight on L_t is z_t / (c L_t) (they sum to one) and scaling a task's
loss by a constant changes nothing. After the optimiser step the batch's losses are
computed again and xi takes a step along -(J_softmax^T delta + decay * xi), with
delta_t = log L_t(before) - log L_t(after): tasks whose loss fell less get more weight,
so all log-losses decrease at a balanced rate. xi has its own Adam
(`objectives.famo_lr`, weight decay `objectives.famo_decay`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from recsys_mtl.config import ObjectivesSection, TaskConfig
from recsys_mtl.objectives.weighting.base import Losses, Weighting, detached_losses

EPS = 1e-8


class FamoWeighting(Weighting):
    normalisation = "sum_to_one"

    def __init__(
        self, tasks: dict[str, TaskConfig], options: ObjectivesSection | None = None
    ) -> None:
        super().__init__(tasks, options)
        options = self.options
        self.logits = nn.Parameter(torch.zeros(len(tasks)))
        self.optimizer = torch.optim.Adam(
            [self.logits], lr=options.famo_lr, weight_decay=options.famo_decay
        )
        self.previous: torch.Tensor | None = None

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        z = torch.softmax(self.logits.detach(), dim=0)
        stacked = torch.stack(list(losses.values())) + EPS
        c = (z / stacked.detach()).sum()
        total = (z * stacked.log()).sum() / c
        self.previous = detached_losses(losses) + EPS
        weights = z / (c * self.previous)
        return total, {n: float(w) for n, w in zip(losses, weights, strict=True)}

    def after_step(self, recompute: Callable[[], Losses]) -> None:
        if self.previous is None:
            return
        self.update(self.previous, detached_losses(recompute()) + EPS)

    def update(self, before: torch.Tensor, after: torch.Tensor) -> None:
        """One step on the logits from the losses (T,) before and after a model step."""
        delta = before.log() - after.log()
        with torch.enable_grad():
            z = torch.softmax(self.logits, dim=0)
            (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta)
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad
        self.optimizer.step()

    def synced_tensors(self) -> list[torch.Tensor]:
        return [self.logits]

    def state_dict(self) -> dict[str, Any]:
        return {"logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
