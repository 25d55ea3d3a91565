"""Task relations: the cosine of task gradients on the shared representation, and task
groups suggested from it.

For tasks a and b with losses L_a, L_b and the shared embeddings' output z (the encoded
users and items of a batch), relation[a, b] = cos(dL_a/dz, dL_b/dz): positive when the
tasks pull the shared representation the same way, negative when they conflict, zero
when they share nothing (the no-sharing baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recsys_mtl.objectives.weighting.base import representation_gradients


def task_gradient_cosines(
    losses: dict[str, torch.Tensor], shared: Sequence[torch.Tensor]
) -> np.ndarray:
    """(T, T) cosine matrix of the task gradients on `shared` (tensors in the graph of
    every loss); the graph is kept for the backward pass that follows."""
    grads = representation_gradients(losses, shared)
    stacked = torch.stack(grads).float()  # (T, N)
    with torch.autocast(stacked.device.type, enabled=False):  # float32 under bfloat16 too
        unit = stacked / stacked.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return (unit @ unit.T).cpu().numpy().astype(np.float64)


def suggest_task_groups(
    matrix: np.ndarray, names: Sequence[str], threshold: float = 0.1
) -> list[list[str]]:
    """Task clustering: average-linkage agglomeration of tasks whose mean pairwise relation
    exceeds `threshold`; the groups can be copied into `model.task_groups`."""
    clusters = [[i] for i in range(len(names))]
    while len(clusters) > 1:
        best, pair = threshold, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                link = float(np.mean(matrix[np.ix_(clusters[a], clusters[b])]))
                if link > best:
                    best, pair = link, (a, b)
        if pair is None:
            break
        a, b = pair
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return [[names[i] for i in cluster] for cluster in sorted(clusters)]
