"""Tensors built once per split; batches are slices of them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recsys_mtl.config import TaskConfig


@dataclass
class TensorData:
    """users, items (N,) int64 vocabulary indices; labels task -> (N,) float32, NaN where
    the label does not exist (rating only where rated)."""

    users: torch.Tensor
    items: torch.Tensor
    labels: dict[str, torch.Tensor]

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, tasks: dict[str, TaskConfig]) -> TensorData:
        labels = {
            name: torch.from_numpy(
                frame[task.label].cast(pl.Float32).fill_null(float("nan")).to_numpy().copy()
            )
            for name, task in tasks.items()
            if task.label in frame.columns
        }
        return cls(
            users=torch.from_numpy(frame["user_idx"].cast(pl.Int64).to_numpy().copy()),
            items=torch.from_numpy(frame["item_idx"].cast(pl.Int64).to_numpy().copy()),
            labels=labels,
        )

    def __len__(self) -> int:
        return self.users.shape[0]

    def take(self, index: torch.Tensor | slice) -> TensorData:
        return TensorData(
            self.users[index], self.items[index], {k: v[index] for k, v in self.labels.items()}
        )

    def shuffled(self, generator: torch.Generator) -> TensorData:
        return self.take(torch.randperm(len(self), generator=generator))

    def batches(self, batch_size: int) -> Iterator[TensorData]:
        """Contiguous slices (views, no copies) of `batch_size` rows."""
        for start in range(0, len(self), batch_size):
            yield self.take(slice(start, start + batch_size))

    def label_means(self) -> dict[str, float]:
        return {
            k: float(np.nanmean(v.numpy())) if (~torch.isnan(v)).any() else 0.0
            for k, v in self.labels.items()
        }


@torch.no_grad()
def predict_arrays(
    model: torch.nn.Module, data: TensorData, batch_size: int = 65536
) -> dict[str, np.ndarray]:
    """Named predictions (N,) for every row: p_<task> / <task>_pred (see the model)."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    for batch in data.batches(batch_size):
        for name, values in model.predictions(model(batch.users, batch.items)).items():
            chunks.setdefault(name, []).append(values)
    model.train(was_training)
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}
