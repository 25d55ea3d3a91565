"""Fusion rules: one ranking score from every head's prediction of the candidates.

Each head gives a score in [0, 1]: p_<task> for binary tasks, the regression prediction
divided by its scale maximum (rating/5) for regression tasks. With weights w_t:

  product   score = prod_t s_t ** w_t      (ranked by sum_t w_t * log s_t)
  sum       score = sum_t w_t * s_t

A weight of 0 drops the head. Weights and mode can change per request.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from recsys_mtl.errors import RecsysError

FUSION_MODES = ("product", "sum")
_FLOOR = 1e-12


def check_fusion(
    weights: Mapping[str, float], mode: str, task_kinds: Mapping[str, str], where: str
) -> dict[str, float]:
    """Validate fusion weights (task -> finite number >= 0) and mode; return them as floats."""
    if mode not in FUSION_MODES:
        raise RecsysError(
            f"fusion mode must be one of {list(FUSION_MODES)}, got {mode!r}",
            where=where,
            fix="use 'product' (p_click^a * p_purchase^b * (rating/5)^c) or 'sum'",
        )
    unknown = sorted(set(weights) - set(task_kinds))
    if unknown:
        raise RecsysError(
            f"fusion weights name unknown tasks {unknown}",
            where=where,
            fix=f"use task names from {sorted(task_kinds)}",
        )
    checked: dict[str, float] = {}
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecsysError(
                f"fusion weight for '{name}' must be a number, got {value!r}",
                where=where,
                fix=f"write e.g. {name}=1.0",
            )
        number = float(value)
        if not number >= 0 or number == float("inf"):
            raise RecsysError(
                f"fusion weight for '{name}' must be a finite number >= 0, got {value!r}",
                where=where,
                fix="use 0 to drop a head, larger weights to favour it",
            )
        checked[name] = number
    if not any(checked.values()):
        raise RecsysError(
            "every fusion weight is 0, so candidates would have no order",
            where=where,
            fix="give at least one head a positive weight, e.g. click=1",
        )
    return checked


def fuse(
    head_scores: Mapping[str, torch.Tensor], weights: Mapping[str, float], mode: str
) -> torch.Tensor:
    """The ranking key (same shape as the scores, higher is better) and nothing else.

    `head_scores[task]` are scores in about [0, 1] (product floors them at 1e-12). For
    'product' the key is the log of the fused score (exponentiate for the score itself);
    for 'sum' it is the score.
    """
    shape = next(iter(head_scores.values())).shape
    key = torch.zeros(shape)
    for name, weight in weights.items():
        if weight == 0:
            continue
        scores = head_scores[name]
        if mode == "product":
            key += weight * torch.log(scores.clamp(min=_FLOOR))
        else:
            key += weight * scores
    return key


def fused_score(key: torch.Tensor, mode: str) -> torch.Tensor:
    """The fused score from `fuse`'s ranking key."""
    return key.exp() if mode == "product" else key
