"""Loss weighting strategies behind one interface (DESIGN.md, 'Weighting strategies').

A strategy is called with the per-task losses (and, for gradient-based strategies, the
shared representation) and returns the scalar to back-propagate and the weights used.
Stateful strategies keep their state and get `on_epoch_end`. Registered in `WEIGHTING`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from recsys_mtl.config import TaskConfig


class WeightingStrategy(Protocol):
    def __call__(
        self, losses: dict[str, torch.Tensor], shared: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StaticWeighting:
    """Fixed weights from each task's `weight`: total = sum_t w_t * L_t."""

    def __init__(self, tasks: dict[str, TaskConfig]) -> None:
        self.weights = {name: float(task.weight) for name, task in tasks.items()}

    def __call__(
        self, losses: dict[str, torch.Tensor], shared: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = sum(self.weights[name] * loss for name, loss in losses.items())
        return total, dict(self.weights)  # type: ignore[return-value]

    def on_epoch_end(self, epoch_losses: dict[str, float]) -> None:
        """Static weights keep no state."""

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = dict(state["weights"])


WEIGHTING: dict[str, Callable[[dict[str, TaskConfig]], WeightingStrategy]] = {
    "static": StaticWeighting,
}
