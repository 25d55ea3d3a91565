"""Mixtures of experts per side: MMoE and CGC/PLE, with gate-utilisation tracking.

Experts are MLPs of `model.hidden_dims`; a gate is a softmax over experts computed from the
gate's input. Each side (user, item) has its own experts and gates, so the click score
stays an inner product of a user vector and an item vector.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from recsys_mtl.config import ModelSection
from recsys_mtl.errors import RecsysError
from recsys_mtl.model.sharing import GateStats, SideBlock, group_label, mlp


class GateMeter:
    """Running mean of gate weights: per gate, the sum of (E,) softmax weights and a count."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        # while a block encodes distinct ids (SideBlock.rows): the batch rows' positions
        # among them, so that each batch row counts once
        self.rows: torch.Tensor | None = None

    def add(self, gate: str, weights: torch.Tensor) -> None:
        """weights (B, E) (or (U, E) of distinct ids, while `rows` is set)."""
        with torch.no_grad():
            if self.rows is not None:
                weights = weights.index_select(0, self.rows)
            total = weights.detach().float().sum(0)
            self.sums[gate] = self.sums[gate] + total if gate in self.sums else total
            self.count[gate] = self.count.get(gate, 0) + weights.shape[0]

    def mean(self, gate: str) -> torch.Tensor | None:
        if gate not in self.sums:
            return None
        return self.sums[gate] / max(self.count[gate], 1)

    def reset(self) -> None:
        self.sums.clear()
        self.count.clear()


def gate_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension (the few experts) of gate logits (..., E).

    Computed with the experts as the leading, contiguous dimension: torch's CPU softmax
    over a last dimension of 2-8 values is not vectorised and took 246 us forward and
    backward for (1024, 3, 4) on 2 cores, against 54 us this way (same values)."""
    leading = torch.softmax(logits.movedim(-1, 0).contiguous(), dim=0)
    return leading.movedim(0, -1)


def _mix(gate_logits: torch.Tensor, expert_outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Softmax gate (B, E) over expert outputs (B, E, H) -> mixed (B, H) and the weights."""
    weights = gate_softmax(gate_logits)
    return torch.bmm(weights.unsqueeze(1), expert_outputs).squeeze(1), weights


class ParallelExperts(nn.Module):
    """E expert MLPs of the same widths applied to one input as batched matrix products:
    the first layer is a single (D, E*H) product, later layers one batched product over
    the experts. Equal to E separate `mlp`s (same initialisation law as nn.Linear), with a
    handful of kernels per layer instead of E."""

    def __init__(self, in_dim: int, widths: list[int], n_experts: int, dropout: float) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        dims = [in_dim, *widths]
        for fan_in, fan_out in itertools.pairwise(dims):
            bound = 1.0 / fan_in**0.5
            self.weights.append(nn.Parameter(torch.empty(n_experts, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.empty(n_experts, 1, fan_out)))
            nn.init.uniform_(self.weights[-1], -bound, bound)
            nn.init.uniform_(self.biases[-1], -bound, bound)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, E, H)."""
        first_w, first_b = self.weights[0], self.biases[0]
        n_experts, fan_in, fan_out = first_w.shape
        # bias + (B, D) @ (D, E*H): all experts' first layers in one product, whose
        # output is already the contiguous (B, E, H) the ReLU and the gates read
        flat = first_w.permute(1, 0, 2).reshape(fan_in, n_experts * fan_out)
        hidden = torch.addmm(first_b.reshape(1, n_experts * fan_out), x, flat)
        hidden = self.dropout(torch.relu(hidden)).view(-1, n_experts, fan_out)
        if len(self.weights) == 1:
            return hidden
        hidden = hidden.transpose(0, 1)  # (E, B, H): one batched product per later layer
        for weight, bias in zip(self.weights[1:], self.biases[1:], strict=True):
            hidden = self.dropout(torch.relu(torch.baddbmm(bias, hidden, weight)))
        return hidden.transpose(0, 1)


def _require_layers(cfg: ModelSection) -> None:
    if not cfg.hidden_dims:
        raise RecsysError(
            f"model.sharing = '{cfg.sharing}' needs model.hidden_dims (the expert widths)",
            fix="set e.g. model.hidden_dims = [64]",
        )


class MMoE(SideBlock):
    """Multi-gate mixture of experts (Ma et al., 2018): `model.experts` shared experts and
    one softmax gate per task group over all of them."""

    def __init__(self, in_dim: int, groups: list[list[str]], cfg: ModelSection) -> None:
        super().__init__(in_dim, groups, cfg)
        _require_layers(cfg)
        self.experts = ParallelExperts(in_dim, cfg.hidden_dims, cfg.experts, cfg.dropout)
        # every group's gate in one product: (B, D) -> (B, G * E)
        self.gates = nn.Linear(in_dim, len(groups) * cfg.experts)
        self.meter = GateMeter()

    def _mixture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> every group's mixture (B, G, H) and gate weights (B, G, E)."""
        expert_outputs = self.experts(x)  # (B, E, H)
        n_groups, n_experts = len(self.groups), self.experts.n_experts
        weights = gate_softmax(self.gates(x).view(-1, n_groups, n_experts))  # (B, G, E)
        # one batched (G, E) x (E, H) product per row; einsum's own reshapes around the
        # same bmm cost 40 us a call forward and backward at (576, 3, 4) x (576, 4, 64)
        return torch.bmm(weights, expert_outputs), weights

    def _count(self, weights: torch.Tensor) -> None:
        if self.training:
            for g in range(len(self.groups)):
                self.meter.add(str(g), weights[:, g])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        mixed, weights = self._mixture(x)
        self._count(weights)
        return list(mixed.unbind(1))

    def rows(self, x: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
        """As SideBlock.rows, gathering the groups' stacked mixture once."""
        mixed, weights = self._mixture(x)
        if self.training:
            self._count(weights.index_select(0, index))
        return list(mixed.index_select(0, index).unbind(1))

    def gate_utilisation(self) -> GateStats:
        """rows = task groups, columns = experts."""
        means = [self.meter.mean(str(g)) for g in range(len(self.groups))]
        if any(m is None for m in means):
            return {}
        return {
            "gates": {
                "rows": [group_label(group) for group in self.groups],
                "columns": [f"expert{e}" for e in range(self.experts.n_experts)],
                "matrix": torch.stack(means).tolist(),  # type: ignore[arg-type]
            }
        }

    def reset_gate_utilisation(self) -> None:
        self.meter.reset()


class PLE(SideBlock):
    """Progressive layered extraction (Tang et al., 2020). Each level has
    `model.task_experts` experts per task group and `model.shared_experts` shared ones; a
    group's gate mixes its own and the shared experts; below the last level a shared gate
    mixes all experts into the next level's shared input. `model.levels` levels."""

    def __init__(
        self, in_dim: int, groups: list[list[str]], cfg: ModelSection, levels: int | None = None
    ) -> None:
        super().__init__(in_dim, groups, cfg)
        _require_layers(cfg)
        self.levels = cfg.levels if levels is None else levels
        n_groups, own, shared = len(groups), cfg.task_experts, cfg.shared_experts
        self.n_own, self.n_shared = own, shared
        self.group_experts = nn.ModuleList()
        self.shared_experts = nn.ModuleList()
        self.group_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        for level in range(self.levels):
            self.group_experts.append(
                nn.ModuleList(
                    nn.ModuleList(mlp(in_dim, cfg.hidden_dims, cfg.dropout) for _ in range(own))
                    for _ in groups
                )
            )
            self.shared_experts.append(
                nn.ModuleList(mlp(in_dim, cfg.hidden_dims, cfg.dropout) for _ in range(shared))
            )
            self.group_gates.append(nn.ModuleList(nn.Linear(in_dim, own + shared) for _ in groups))
            if level < self.levels - 1:
                self.shared_gates.append(nn.Linear(in_dim, n_groups * own + shared))
            in_dim = self.out_dim
        self.meter = GateMeter()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        group_inputs = [x] * len(self.groups)
        shared_input = x
        for level in range(self.levels):
            shared_out = [expert(shared_input) for expert in self.shared_experts[level]]
            own_out = [
                [expert(h) for expert in experts]
                for experts, h in zip(self.group_experts[level], group_inputs, strict=True)
            ]
            next_inputs = []
            for g, gate in enumerate(self.group_gates[level]):
                mixed, weights = _mix(
                    gate(group_inputs[g]), torch.stack(own_out[g] + shared_out, dim=1)
                )
                if self.training:
                    self.meter.add(f"{level}/{g}", weights)
                next_inputs.append(mixed)
            if level < self.levels - 1:
                everything = [o for outs in own_out for o in outs] + shared_out
                shared_input, weights = _mix(
                    self.shared_gates[level](shared_input), torch.stack(everything, dim=1)
                )
                if self.training:
                    self.meter.add(f"{level}/shared", weights)
            group_inputs = next_inputs
        return group_inputs

    def gate_utilisation(self) -> GateStats:
        """Per level: rows = gates (task groups, then the shared gate), columns = every
        expert of the level (each group's own, then the shared); zero where a gate cannot
        reach an expert."""
        n_groups = len(self.groups)
        columns = [
            f"{group_label(group)}:{e}" for group in self.groups for e in range(self.n_own)
        ] + [f"shared:{e}" for e in range(self.n_shared)]
        out: GateStats = {}
        for level in range(self.levels):
            rows, matrix = [], []
            for g, group in enumerate(self.groups):
                mean = self.meter.mean(f"{level}/{g}")
                if mean is None:
                    continue
                row = mean.new_zeros(len(columns))
                row[g * self.n_own : (g + 1) * self.n_own] = mean[: self.n_own]
                row[n_groups * self.n_own :] = mean[self.n_own :]
                rows.append(group_label(group))
                matrix.append(row)
            shared = self.meter.mean(f"{level}/shared")
            if shared is not None:
                rows.append("shared")
                matrix.append(shared)
            if rows:
                out[f"level{level}"] = {
                    "rows": rows,
                    "columns": columns,
                    "matrix": torch.stack(matrix).tolist(),
                }
        return out

    def reset_gate_utilisation(self) -> None:
        self.meter.reset()


class CGC(PLE):
    """Customized gate control: PLE with a single extraction level."""

    def __init__(self, in_dim: int, groups: list[list[str]], cfg: ModelSection) -> None:
        super().__init__(in_dim, groups, cfg, levels=1)
