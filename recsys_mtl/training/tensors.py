"""Tensors built once per split; batches are slices of them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recsys_mtl.config import TaskConfig
from recsys_mtl.features.columns import EMBEDDED_KINDS, ColumnSpec
from recsys_mtl.features.transform import FeatureTransform
from recsys_mtl.model.embeddings import RowInputs


def row_inputs(frame: pl.DataFrame, columns: list[ColumnSpec], n: int | None = None) -> RowInputs:
    """RowInputs for n rows (default: the frame's height) from a frame's encoded
    row-feature columns (named as in `columns`)."""
    n = frame.height if n is None else n
    categorical = [c.name for c in columns if c.kind in EMBEDDED_KINDS]
    numeric = [c.name for c in columns if c.kind == "numeric"]
    lists = [c for c in columns if c.kind == "list"]
    return RowInputs(
        torch.from_numpy(
            frame.select(categorical).to_numpy().astype(np.int64).reshape(n, len(categorical))
        ),
        torch.from_numpy(
            frame.select(numeric).to_numpy().astype(np.float32).reshape(n, len(numeric))
        ),
        {
            c.name: torch.from_numpy(
                frame[c.name].to_numpy().astype(np.int64).reshape(n, c.max_length)
            )
            for c in lists
        },
    )


@dataclass
class TensorData:
    """users, items (N,) int64 vocabulary indices; user_rows, item_rows the row features;
    labels task -> (N,) float32, NaN where the label does not exist (rating only where
    rated)."""

    users: torch.Tensor
    items: torch.Tensor
    user_rows: RowInputs
    item_rows: RowInputs
    labels: dict[str, torch.Tensor]

    @classmethod
    def from_frame(
        cls,
        frame: pl.DataFrame,
        tasks: dict[str, TaskConfig],
        transform: FeatureTransform | None = None,
    ) -> TensorData:
        """Tensors of an encoded feature frame; without `transform`, no row features
        (enough for labels and metrics)."""
        user_columns = transform.users.spec.rows if transform is not None else []
        item_columns = transform.items.spec.rows if transform is not None else []
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
            user_rows=row_inputs(frame, user_columns),
            item_rows=row_inputs(frame, item_columns),
            labels=labels,
        )

    def __len__(self) -> int:
        return self.users.shape[0]

    def take(self, index: torch.Tensor | slice) -> TensorData:
        return TensorData(
            self.users[index],
            self.items[index],
            self.user_rows.take(index),
            self.item_rows.take(index),
            {k: v[index] for k, v in self.labels.items()},
        )

    @classmethod
    def concat(cls, parts: list[TensorData]) -> TensorData:
        """Rows of every part, in order (labels: the tasks every part has)."""
        names = [n for n in parts[0].labels if all(n in p.labels for p in parts)]
        return cls(
            torch.cat([p.users for p in parts]),
            torch.cat([p.items for p in parts]),
            RowInputs.concat([p.user_rows for p in parts]),
            RowInputs.concat([p.item_rows for p in parts]),
            {n: torch.cat([p.labels[n] for p in parts]) for n in names},
        )

    def to(self, device: torch.device) -> TensorData:
        """The same rows on `device` (no copy when already there)."""
        if self.users.device == device:
            return self
        return TensorData(
            self.users.to(device, non_blocking=True),
            self.items.to(device, non_blocking=True),
            self.user_rows.to(device),
            self.item_rows.to(device),
            {k: v.to(device, non_blocking=True) for k, v in self.labels.items()},
        )

    def shuffled(self, generator: torch.Generator) -> TensorData:
        """The rows in the generator's random order (the same order on every device)."""
        order = torch.randperm(len(self), generator=generator, device=generator.device)
        return self.take(order.to(self.users.device))

    def epoch_batches(self, generator: torch.Generator, batch_size: int) -> Iterator[TensorData]:
        """One epoch: the rows in a seeded random order, cut into batches."""
        return self.shuffled(generator).batches(batch_size)

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
    device = next(model.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {}
    for batch in data.batches(batch_size):
        batch = batch.to(device)
        outputs = model(batch.users, batch.items, batch.user_rows, batch.item_rows)
        for name, values in model.predictions(outputs).items():
            chunks.setdefault(name, []).append(values.cpu())
    model.train(was_training)
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}
