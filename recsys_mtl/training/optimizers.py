"""Optimisers: Adam for dense parameters, a row-wise (lazy) Adam for large id tables.

A dense Adam step touches every row of every embedding table, so with 1M users at
dim 64 each step costs as much as a pass over the whole table. Tables with at least
`training.sparse_embedding_rows` rows instead get sparse gradients (only the rows in
the batch) and `torch.optim.SparseAdam`, which updates just those rows and their
moments. Those tables get no weight decay (SparseAdam has none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def sparse_tables(model: nn.Module, min_rows: int) -> list[str]:
    """Switch every nn.Embedding with at least `min_rows` rows to sparse gradients;
    returns the names of their weights (0 turns the feature off)."""
    names = []
    if min_rows <= 0:
        return names
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings >= min_rows:
            module.sparse = True
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


class Optimizers:
    """Several torch optimisers stepped together, with one state_dict."""

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for optimizer, part in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(part)


def _adam(groups: list[dict[str, Any]], learning_rate: float, weight_decay: float) -> Any:
    """Adam with its fused kernel (every parameter in one pass, on the CPU as on a GPU);
    where the parameters' device or dtype has none, the multi-tensor (foreach) path. Both
    compute Adam's update; the default on the CPU would loop over the tensors."""
    try:
        return torch.optim.Adam(groups, lr=learning_rate, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(groups, lr=learning_rate, weight_decay=weight_decay, foreach=True)


def build_optimizers(
    model: nn.Module,
    extra: list[torch.Tensor],
    *,
    learning_rate: float,
    weight_decay: float,
    sparse_rows: int,
) -> tuple[Optimizers, list[str]]:
    """Adam (with weight decay) for the model's dense parameters, Adam without decay for
    `extra` (learnable task weights), SparseAdam for tables of >= `sparse_rows` rows.
    Returns the optimisers and the names of the sparse tables."""
    sparse_names = set(sparse_tables(model, sparse_rows))
    dense, sparse = [], []
    for name, parameter in model.named_parameters():
        (sparse if name in sparse_names else dense).append(parameter)
    groups: list[dict[str, Any]] = [{"params": dense}]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    optimizers: list[torch.optim.Optimizer] = [_adam(groups, learning_rate, weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=learning_rate))
    return Optimizers(optimizers), sorted(sparse_names)
