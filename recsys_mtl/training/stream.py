"""Training rows streamed from a split's Parquet shards with bounded memory.

An epoch visits every row of the ranges once: the row groups (`SplitShards.blocks`)
are put in a seeded random order and read a buffer of about `buffer_rows` rows at a
time (the next buffer is read in a background thread while the current one trains);
each buffer is shuffled and cut into batches, and the rows short of a full batch are
carried into the next buffer. So memory holds two buffers, never the split, and the
number of batches is ceil(rows / batch_size) whatever the buffer boundaries (which
keeps distributed ranks in step).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import torch

from recsys_mtl.config import TaskConfig
from recsys_mtl.features.shards import SplitShards
from recsys_mtl.features.transform import FeatureTransform
from recsys_mtl.training.tensors import TensorData


def read_rows(
    shards: SplitShards,
    ranges: list[tuple[int, int]],
    tasks: dict[str, TaskConfig],
    transform: FeatureTransform,
) -> TensorData:
    """The rows of `ranges` (in order) as tensors."""
    parts = [TensorData.from_frame(shards.read(a, b), tasks, transform) for a, b in ranges]
    return parts[0] if len(parts) == 1 else TensorData.concat(parts)


class StreamedRows:
    """Rows `ranges` of `shards`, read buffer by buffer each epoch (see the module)."""

    def __init__(
        self,
        shards: SplitShards,
        ranges: list[tuple[int, int]],
        tasks: dict[str, TaskConfig],
        transform: FeatureTransform,
        buffer_rows: int,
    ) -> None:
        self.shards = shards
        self.ranges = ranges
        self.tasks = tasks
        self.transform = transform
        self.buffer_rows = buffer_rows
        self.blocks = [block for a, b in ranges for block in shards.blocks(a, b)]

    def __len__(self) -> int:
        return sum(b - a for a, b in self.ranges)

    def buffers(self, generator: torch.Generator) -> list[list[tuple[int, int]]]:
        """This epoch's buffers: the blocks in a seeded random order, grouped into runs of
        at least `buffer_rows` rows (the last may be smaller)."""
        order = torch.randperm(len(self.blocks), generator=generator, device=generator.device)
        order = order.tolist()
        buffers: list[list[tuple[int, int]]] = [[]]
        rows = 0
        for position in order:
            if rows >= self.buffer_rows:
                buffers.append([])
                rows = 0
            block = self.blocks[position]
            buffers[-1].append(block)
            rows += block[1] - block[0]
        return [b for b in buffers if b]

    def _read(self, blocks: list[tuple[int, int]]) -> TensorData:
        frames = [self.shards.read(a, b) for a, b in blocks]
        frame = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        return TensorData.from_frame(frame, self.tasks, self.transform)

    def epoch_batches(self, generator: torch.Generator, batch_size: int) -> Iterator[TensorData]:
        """Shuffled batches of `batch_size` rows covering every row once."""
        buffers = self.buffers(generator)
        carry: TensorData | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-stream") as pool:
            pending = pool.submit(self._read, buffers[0]) if buffers else None
            for position in range(len(buffers)):
                assert pending is not None
                data = pending.result()
                last = position == len(buffers) - 1
                if not last:
                    pending = pool.submit(self._read, buffers[position + 1])
                data = data.shuffled(generator)
                if carry is not None and len(carry):
                    data = TensorData.concat([carry, data])
                end = len(data) if last else len(data) // batch_size * batch_size
                yield from data.take(slice(0, end)).batches(batch_size)
                carry = data.take(slice(end, len(data)))


def split_label_means(shards: SplitShards, tasks: dict[str, TaskConfig]) -> dict[str, float]:
    """Mean of each task's label over the whole split, where it exists (lazy scan)."""
    columns = shards.scan().collect_schema().names()
    labels = {name: task.label for name, task in tasks.items() if task.label in columns}
    if not labels:
        return {}
    means = (
        shards.scan()
        .select(pl.col(label).cast(pl.Float64).mean().alias(name) for name, label in labels.items())
        .collect()
    )
    return {name: float(means[name][0] or 0.0) for name in labels}


def split_item_clicks(shards: SplitShards, label: str, n_items: int) -> torch.Tensor:
    """(n_items,) how often each item index has `label` = 1 in the whole split."""
    counts = (
        shards.scan()
        .filter(pl.col(label) == 1)
        .group_by("item_idx")
        .agg(pl.len().alias("n"))
        .collect()
    )
    out = np.zeros(n_items, dtype=np.float64)
    out[counts["item_idx"].to_numpy().astype(np.int64)] = counts["n"].to_numpy()
    return torch.from_numpy(out).float()
