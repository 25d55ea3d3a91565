"""Task heads over per-task (user_repr, item_repr) pairs, each (B, H)."""

from __future__ import annotations

import torch
from torch import nn


class DotHead(nn.Module):
    """Retrievable head: logit = <P u, Q v> + b(v), an exact inner product of exported
    vectors [P u, 1] and [Q v, b(v)] (the item bias folded into the item vector)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.user_proj = nn.Linear(in_dim, out_dim)
        self.item_proj = nn.Linear(in_dim, out_dim)
        self.item_bias = nn.Linear(in_dim, 1)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.logit_and_vectors(user, item)[0]

    def logit_and_vectors(
        self, user: torch.Tensor, item: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The logit (B,) and the exported vectors it is the inner product of, (B, D + 1)
        each (what the in-batch retrieval loss reads)."""
        vectors = self.user_vector(user), self.item_vector(item)
        return (vectors[0] * vectors[1]).sum(-1), vectors

    def user_vector(self, user: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, D + 1)."""
        projected = self.user_proj(user)
        return torch.cat([projected, torch.ones_like(projected[:, :1])], dim=-1)

    def item_vector(self, item: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, D + 1)."""
        return torch.cat([self.item_proj(item), self.item_bias(item)], dim=-1)


class MlpHead(nn.Module):
    """Ranking head: an MLP over [u, v, u * v] -> (B,), plus an offset (the training mean
    of a regression label, zero for logits)."""

    def __init__(self, in_dim: int, hidden: int, offset: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("offset", torch.tensor(float(offset)))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([user, item, user * item], dim=-1)).squeeze(-1) + self.offset


HEADS = {"dot": DotHead, "mlp": MlpHead}
