"""Per-task losses, each masked to the rows where its label exists (labels are NaN elsewhere)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from recsys_mtl.config import TaskConfig

LOG_EPS = 1e-7


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def binary_nll_from_log_p(log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy from log p (B,), stable for p near 0 and 1."""
    log_p = log_p.clamp(max=-LOG_EPS)
    log_not_p = torch.log(-torch.expm1(log_p))
    return -(labels * log_p + (1.0 - labels) * log_not_p)


def task_losses(
    outputs: dict[str, torch.Tensor],
    log_p: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    tasks: dict[str, TaskConfig],
) -> dict[str, torch.Tensor]:
    """Mean loss per task over labelled rows.

    A binary task without dependency uses BCE on its logit. A dependent task (purchase)
    is trained on the entire space through its funnel probability log p (ESMM), so
    p(purchase | click) is learned only through the product. Regression uses MSE.
    """
    losses = {}
    for name, task in tasks.items():
        y = labels[name]
        mask = (~torch.isnan(y)).float()
        y = torch.nan_to_num(y)
        if task.kind == "regression":
            per_row = (outputs[name] - y) ** 2
        elif task.depends_on:
            per_row = binary_nll_from_log_p(log_p[name], y)
        else:
            per_row = F.binary_cross_entropy_with_logits(outputs[name], y, reduction="none")
        losses[name] = _masked_mean(per_row, mask)
    return losses
