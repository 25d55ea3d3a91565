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


def in_batch_softmax_loss(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    item_idx: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Retrieval loss over P clicked (user, item) rows (P, D): a softmax over the batch's
    clicked items in which row i's positive is item i and the other rows' items are its
    negatives (rows with the same item are masked out). `log_q` (n_items,) is the log
    probability of an item appearing as an in-batch negative (its click frequency); it is
    subtracted from the logits so popular items are not over-penalised (Yi et al., 2019)."""
    n = user_vectors.shape[0]
    if n < 2:
        return user_vectors.sum() * 0.0
    logits = user_vectors @ item_vectors.T  # (P, P)
    if log_q is not None:
        logits = logits - log_q[item_idx].unsqueeze(0)
    same_item = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    diagonal = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same_item & ~diagonal, float("-inf"))
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))
