"""Sharing architectures: how the tasks share the per-side representations.

Every architecture maps the user input (B, Du) and item input (B, Di) to one
(user_repr, item_repr) pair per task, each (B, H), computed on each side separately,
so the click head's score stays an inner product of a user and an item vector.
Registered in `SHARING`; the model and trainer never branch on the name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from recsys_mtl.config import ModelSection

TaskReprs = dict[str, tuple[torch.Tensor, torch.Tensor]]


def mlp(in_dim: int, widths: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear + ReLU (+ dropout) layers; returns an identity for no widths."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


class HardSharing(nn.Module):
    """Shared bottom: one tower per side, its output shared by every task."""

    def __init__(self, user_dim: int, item_dim: int, tasks: Sequence[str], cfg: ModelSection):
        super().__init__()
        self.tasks = list(tasks)
        self.user_tower = mlp(user_dim, cfg.hidden_dims, cfg.dropout)
        self.item_tower = mlp(item_dim, cfg.hidden_dims, cfg.dropout)
        self.out_dim = cfg.hidden_dims[-1] if cfg.hidden_dims else user_dim
        if not cfg.hidden_dims and user_dim != item_dim:
            raise ValueError("hard sharing without hidden layers needs equal user/item widths")

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> TaskReprs:
        u, v = self.user_tower(users), self.item_tower(items)
        return {task: (u, v) for task in self.tasks}

    def user_repr(self, users: torch.Tensor, task: str) -> torch.Tensor:
        return self.user_tower(users)

    def item_repr(self, items: torch.Tensor, task: str) -> torch.Tensor:
        return self.item_tower(items)


SharingFactory = Callable[[int, int, Sequence[str], ModelSection], nn.Module]
SHARING: dict[str, SharingFactory] = {"hard": HardSharing}
