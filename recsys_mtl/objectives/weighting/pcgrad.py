"""PCGrad gradient surgery (Yu, Kumar, Gupta, Levine, Hausman and Finn, 2020,
"Gradient Surgery for Multi-Task Learning"), on the shared representation.

Each task's gradient g_t on the shared representation z (of its weighted loss, with
the configured task weights) is projected, in a random order of the other tasks,
onto the normal plane of every g_j it conflicts with (g_t . g_j < 0):
    g_t <- g_t - (g_t . g_j / ||g_j||^2) g_j,
and z receives the sum of the projected gradients; everything above z (sharing
blocks, heads) receives the plain weighted sum. The returned scalar does exactly that:
sum_t w_t L_t + <z, g_surgery - g_sum> with the correction held constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recsys_mtl.objectives.weighting.base import (
    Losses,
    Weighting,
    representation_gradients,
    weighted_sum,
)


def project_conflicting(grads: torch.Tensor, order: list[list[int]]) -> torch.Tensor:
    """grads (T, P) -> the PCGrad-projected gradients (T, P); `order[t]` lists the other
    tasks in the order task t is projected against them."""
    projected = grads.clone()
    for t, others in enumerate(order):
        for j in others:
            dot = projected[t] @ grads[j]
            if dot < 0:
                projected[t] -= dot / grads[j].pow(2).sum().clamp(min=1e-20) * grads[j]
    return projected


class PCGradWeighting(Weighting):
    normalisation = "task"
    reads_shared_gradients = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(0)

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        weighted = {n: self.task_weights[n] * loss for n, loss in losses.items()}
        grads = torch.stack(representation_gradients(weighted, shared))  # (T, P)
        n = len(weighted)
        device = self.generator.device  # a host-side order, drawn where its generator is
        order = [
            [
                j
                for j in torch.randperm(n, generator=self.generator, device=device).tolist()
                if j != t
            ]
            for t in range(n)
        ]
        correction = project_conflicting(grads, order).sum(0) - grads.sum(0)
        total = weighted_sum(losses, self.task_weights)
        offset = 0
        for tensor in shared:
            size = tensor.numel()
            total = total + (tensor * correction[offset : offset + size].view_as(tensor)).sum()
            offset += size
        return total, dict(self.task_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
