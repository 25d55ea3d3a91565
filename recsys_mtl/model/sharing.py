"""Sharing architectures: how the tasks share the per-side representations.

Every architecture maps the encoded users (B, Du) and items (B, Di) to one
(user_repr, item_repr) pair per task, each (B, H). Each side runs its own block, so the
click head's score stays an inner product of a user vector and an item vector whatever
the architecture. Tasks are arranged in groups (`model.task_groups`; unlisted tasks form
their own group): a group shares a tower, a gate or its specific experts.

This module holds the block interface and the tower-based blocks; `experts.py` holds the
mixtures of experts; `architectures.py` registers them all.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from recsys_mtl.config import ModelSection
from recsys_mtl.errors import RecsysError

TaskReprs = dict[str, tuple[torch.Tensor, torch.Tensor]]
GateStats = dict[str, dict[str, Any]]


def mlp(in_dim: int, widths: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear + ReLU (+ dropout) layers; an identity for no widths."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


def resolve_groups(tasks: Sequence[str], declared: Sequence[Sequence[str]]) -> list[list[str]]:
    """Declared task groups (in task order), then one group per unlisted task."""
    grouped = {name for group in declared for name in group}
    groups = [[name for name in tasks if name in group] for group in declared if group]
    return groups + [[name] for name in tasks if name not in grouped]


def group_label(group: Sequence[str]) -> str:
    return "+".join(group)


class SideBlock(nn.Module):
    """One side's sharing: (B, D) -> one (B, H) output per task group."""

    separate_embeddings: ClassVar[bool] = False

    def __init__(self, in_dim: int, groups: list[list[str]], cfg: ModelSection) -> None:
        super().__init__()
        self.groups = groups
        self.out_dim = cfg.hidden_dims[-1] if cfg.hidden_dims else in_dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def group_output(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """Output of one group (B, H); blocks override it when cheaper than all groups."""
        return self.forward(x)[group]

    def rows(self, x: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
        """`forward` of distinct rows `x` (U, D), read by the batch rows: each group's
        output (B, H) holds row `index[b]` of `forward(x)`'s for batch row b. An output
        that several groups share is gathered once; gate statistics count batch rows.
        Gathers are `index_select`, whose backward (an index_add) took 96 us for a
        (1024, 3, 64) gradient on 2 cores, against 755 us for `output[index]`'s
        (an accumulating index_put)."""
        meter = getattr(self, "meter", None)
        if meter is not None:
            meter.rows = index
        try:
            outputs = self.forward(x)
        finally:
            if meter is not None:
                meter.rows = None
        gathered: dict[int, torch.Tensor] = {}
        for output in outputs:
            if id(output) not in gathered:
                gathered[id(output)] = output.index_select(0, index)
        return [gathered[id(output)] for output in outputs]

    def penalty(self) -> torch.Tensor | None:
        """Extra loss term (soft parameter sharing), or None."""
        return None

    def gate_utilisation(self) -> GateStats:
        """Mean gate weight of each expert per group since the last reset (MoE blocks)."""
        return {}

    def reset_gate_utilisation(self) -> None:
        """Start a new gate-utilisation window (MoE blocks)."""


def _require_layers(cfg: ModelSection) -> None:
    if not cfg.hidden_dims:
        raise RecsysError(
            f"model.sharing = '{cfg.sharing}' needs at least one layer in model.hidden_dims",
            fix="set e.g. model.hidden_dims = [64]",
        )


class HardSharing(SideBlock):
    """Shared bottom: one tower whose output every task reads."""

    def __init__(self, in_dim: int, groups: list[list[str]], cfg: ModelSection) -> None:
        super().__init__(in_dim, groups, cfg)
        self.tower = mlp(in_dim, cfg.hidden_dims, cfg.dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shared = self.tower(x)
        return [shared] * len(self.groups)

    def group_output(self, x: torch.Tensor, group: int) -> torch.Tensor:
        return self.tower(x)


class NoSharing(SideBlock):
    """One model per task group: separate embeddings (the input is one encoder copy per
    group, concatenated) and separate towers. With singleton groups, the single-task
    baselines trained side by side by the same trainer."""

    separate_embeddings = True

    def __init__(self, in_dim: int, groups: list[list[str]], cfg: ModelSection) -> None:
        super().__init__(in_dim, groups, cfg)
        self.copy_dim = in_dim
        self.towers = nn.ModuleList(mlp(in_dim, cfg.hidden_dims, cfg.dropout) for _ in groups)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        chunks = x.split(self.copy_dim, dim=-1)
        return [tower(chunk) for tower, chunk in zip(self.towers, chunks, strict=True)]

    def group_output(self, x: torch.Tensor, group: int) -> torch.Tensor:
        start = group * self.copy_dim
        return self.towers[group](x[:, start : start + self.copy_dim])


class SoftL2Sharing(SideBlock):
    """Soft sharing by an L2 penalty: one tower per group on the shared embeddings, and
    `tie_strength * sum over group pairs ||theta_a - theta_b||^2` added to the loss."""

    def __init__(self, in_dim: int, groups: list[list[str]], cfg: ModelSection) -> None:
        super().__init__(in_dim, groups, cfg)
        _require_layers(cfg)
        self.strength = cfg.tie_strength
        self.towers = nn.ModuleList(mlp(in_dim, cfg.hidden_dims, cfg.dropout) for _ in groups)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [tower(x) for tower in self.towers]

    def group_output(self, x: torch.Tensor, group: int) -> torch.Tensor:
        return self.towers[group](x)

    def penalty(self) -> torch.Tensor | None:
        if len(self.towers) < 2 or self.strength == 0:
            return None
        params = [list(tower.parameters()) for tower in self.towers]
        total = sum(
            ((pa - pb) ** 2).sum()
            for a, b in itertools.combinations(params, 2)
            for pa, pb in zip(a, b, strict=True)
        )
        return self.strength * total  # type: ignore[return-value]


class CrossStitchSharing(SideBlock):
    """Cross-stitch units (Misra et al., 2016): one tower per group, and after every layer
    each group's activation becomes a learned mix of all groups' activations,
    h_g <- sum_k alpha[g, k] h_k, with alpha initialised near the identity."""

    def __init__(self, in_dim: int, groups: list[list[str]], cfg: ModelSection) -> None:
        super().__init__(in_dim, groups, cfg)
        _require_layers(cfg)
        n = len(groups)
        self.layers = nn.ModuleList()
        for width in cfg.hidden_dims:
            self.layers.append(
                nn.ModuleList(
                    nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(cfg.dropout))
                    for _ in groups
                )
            )
            in_dim = width
        off = 0.1 / (n - 1) if n > 1 else 0.0
        init = torch.full((n, n), off) + torch.eye(n) * (0.9 - off if n > 1 else 1.0)
        self.stitches = nn.ParameterList(nn.Parameter(init.clone()) for _ in cfg.hidden_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        hidden = [x] * len(self.groups)
        for layer, alpha in zip(self.layers, self.stitches, strict=True):
            stacked = torch.stack([f(h) for f, h in zip(layer, hidden, strict=True)])  # (G,B,W)
            hidden = list(torch.einsum("gk,kbw->gbw", alpha, stacked).unbind(0))
        return hidden
