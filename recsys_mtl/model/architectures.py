"""The registry of sharing architectures and the two-sided wrapper the model holds.

A block class says whether it needs one embedding copy per task group
(`separate_embeddings`, the no-sharing baseline), may add a `penalty` to the loss (soft
sharing) and reports `gate_utilisation` (mixtures of experts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys_mtl.config import ModelSection
from recsys_mtl.errors import RecsysError
from recsys_mtl.model.experts import CGC, PLE, MMoE
from recsys_mtl.model.sharing import (
    CrossStitchSharing,
    GateStats,
    HardSharing,
    NoSharing,
    SideBlock,
    SoftL2Sharing,
    TaskReprs,
    resolve_groups,
)

SHARING: dict[str, type[SideBlock]] = {
    "none": NoSharing,
    "hard": HardSharing,
    "soft_l2": SoftL2Sharing,
    "cross_stitch": CrossStitchSharing,
    "mmoe": MMoE,
    "cgc": CGC,
    "ple": PLE,
}
"""Sharing architectures by name (`model.sharing`); the model never branches on a name."""


class Sharing(nn.Module):
    """A user block and an item block of one architecture; maps the encoded sides to one
    (user_repr, item_repr) pair per task."""

    def __init__(self, user_block: SideBlock, item_block: SideBlock, groups: list[list[str]]):
        super().__init__()
        self.user_block = user_block
        self.item_block = item_block
        self.groups = groups
        self.group_of = {name: g for g, group in enumerate(groups) for name in group}
        self.out_dim = user_block.out_dim
        if user_block.out_dim != item_block.out_dim:
            raise RecsysError(
                "sharing without hidden layers needs equal user and item encoder widths",
                fix="set model.hidden_dims, e.g. [64]",
            )

    def forward(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        user_index: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
    ) -> TaskReprs:
        """With an index, `users` (`items`) are distinct ids' rows and each batch row
        reads row index[b] of every output (SideBlock.rows)."""
        u = (
            self.user_block(users)
            if user_index is None
            else self.user_block.rows(users, user_index)
        )
        v = (
            self.item_block(items)
            if item_index is None
            else self.item_block.rows(items, item_index)
        )
        return {name: (u[g], v[g]) for name, g in self.group_of.items()}

    def user_repr(self, users: torch.Tensor, task: str) -> torch.Tensor:
        return self.user_block.group_output(users, self.group_of[task])

    def item_repr(self, items: torch.Tensor, task: str) -> torch.Tensor:
        return self.item_block.group_output(items, self.group_of[task])

    def penalty(self) -> torch.Tensor | None:
        terms = [t for t in (self.user_block.penalty(), self.item_block.penalty()) if t is not None]
        return sum(terms) if terms else None  # type: ignore[return-value]

    def gate_utilisation(self) -> GateStats:
        """{'user/<gate>' or 'item/<gate>': {'rows', 'columns', 'matrix'}} (MoE only)."""
        out: GateStats = {}
        for side, block in (("user", self.user_block), ("item", self.item_block)):
            out.update({f"{side}/{k}": v for k, v in block.gate_utilisation().items()})
        return out

    def reset_gate_utilisation(self) -> None:
        self.user_block.reset_gate_utilisation()
        self.item_block.reset_gate_utilisation()


def build_sharing(user_dim: int, item_dim: int, tasks: Sequence[str], cfg: ModelSection) -> Sharing:
    """The registered architecture `cfg.sharing` for encoders of widths user_dim, item_dim
    (per embedding copy)."""
    block = SHARING[cfg.sharing]
    groups = resolve_groups(tasks, cfg.task_groups)
    return Sharing(block(user_dim, groups, cfg), block(item_dim, groups, cfg), groups)


def embedding_copies(cfg: ModelSection, tasks: Sequence[str]) -> int:
    """How many copies of the embedding tables the architecture needs."""
    if SHARING[cfg.sharing].separate_embeddings:
        return len(resolve_groups(tasks, cfg.task_groups))
    return 1
