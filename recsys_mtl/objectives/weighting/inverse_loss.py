"""Inverse-loss power rule: w_t proportional to L_t^(-alpha), normalised to sum to T.

The weights are computed from the batch's (detached) losses, so a task whose loss is k
times larger gets k^alpha times less weight: alpha = 1 gives every task the same
weighted loss w_t * L_t (the usual fix for classification and regression losses on
different scales); alpha = 0 is uniform weighting. (The heuristic behind loss-balanced
weighting, e.g. Liu et al., 2019, "End-to-End Multi-Task Learning with Attention",
Section 4 baselines; alpha from `objectives.inverse_loss_alpha`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recsys_mtl.objectives.weighting.base import (
    Losses,
    Weighting,
    detached_losses,
    weighted_sum,
)

EPS = 1e-8


class InverseLossWeighting(Weighting):
    normalisation = "sum_to_tasks"

    def __call__(
        self, losses: Losses, shared: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raw = (detached_losses(losses) + EPS) ** (-self.options.inverse_loss_alpha)
        weights = raw * len(raw) / raw.sum()
        named = dict(zip(losses, weights, strict=True))
        return weighted_sum(losses, named), {n: float(w) for n, w in named.items()}
