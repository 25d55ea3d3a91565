"""The interface every loss weighting strategy implements (DESIGN.md, 'Weighting').

A strategy gets the per-task losses and the shared representation (the tensors the
tasks share: the encoded users and items) and returns the scalar to back-propagate and
the weight of each task used for it. Strategies with learnable parameters expose them
(the trainer optimises them with the model, without weight decay); strategies that
look at the losses after the optimiser step get `after_step`; stateful ones get
`on_epoch_end` and save their state with the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from recsys_mtl.config import ObjectivesSection, TaskConfig

Losses = dict[str, torch.Tensor]


class Weighting:
    """Base class: no parameters, no hooks, no state. Subclasses implement `__call__`."""

    #: How the returned weights are normalised, for the docs and the contract test:
    #: "task" (each task's configured weight), "sum_to_tasks" (sum = number of tasks),
    #: "sum_to_one", or "none".
    normalisation = "none"
    #: Whether `__call__` differentiates through `shared` per row (the trainer then keeps
    #: one encoded row per batch row: no `training.deduplicate_ids`).
    reads_shared_gradients = False

    def __init__(
        self, tasks: dict[str, TaskConfig], options: ObjectivesSection | None = None
    ) -> None:
        self.tasks = list(tasks)
        self.task_weights = {name: float(task.weight) for name, task in tasks.items()}
        self.options = options if options is not None else ObjectivesSection()

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters the trainer optimises with the model."""
        return []

    def synced_tensors(self) -> list[torch.Tensor]:
        """State a strategy updates by itself from the batch (not by the trainer's
        optimiser): a distributed run replaces it by its mean over ranks after each
        step, so every rank weights the tasks alike."""
        return []

    def after_step(self, recompute: Callable[[], Losses]) -> None:
        """Called after each optimiser step; `recompute()` gives the batch's losses under
        the updated model (no gradient). Only strategies that need it call it."""

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Mean training loss of each task over the epoch that just ended."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def weighted_sum(losses: Losses, weights: dict[str, float | torch.Tensor]) -> torch.Tensor:
    """sum_t w_t * L_t."""
    return torch.stack([weights[name] * loss for name, loss in losses.items()]).sum()


def detached_losses(losses: Losses) -> torch.Tensor:
    """(T,) the loss values, detached, in task order."""
    return torch.stack([loss.detach() for loss in losses.values()])


def representation_gradients(losses: Losses, shared: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each task's gradient on the shared representation, flattened (one (P,) per task);
    the graph is kept for the backward pass that follows."""
    if not shared:
        raise ValueError("this weighting strategy needs the shared representation")
    grads = []
    for loss in losses.values():
        parts = torch.autograd.grad(loss, list(shared), retain_graph=True, allow_unused=True)
        grads.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(s)).reshape(-1)
                    for g, s in zip(parts, shared, strict=True)
                ]
            )
        )
    return grads
