"""What a training run reads: this process's rows, in memory or streamed, and the
statistics of all the rows (label means for the heads' initial biases, item click
counts for the retrieval loss's frequency correction)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recsys_mtl.config import TaskConfig, TrainingSection
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import FeatureSet
from recsys_mtl.features.shards import SplitShards
from recsys_mtl.training.distributed import SINGLE, Distributed
from recsys_mtl.training.stream import (
    StreamedRows,
    read_rows,
    split_item_clicks,
    split_label_means,
)
from recsys_mtl.training.tensors import TensorData

#: Columns of the training rows the validation ranking probe reads (besides tensors).
PROBE_COLUMNS = ["user_idx", "item_idx", "timestamp", "click"]


@dataclass
class TrainingInput:
    """`rows`: what this process trains on; `label_means` and `item_clicks` (n_items,)
    are over every training row (all ranks); `take` reads training rows by number as
    tensors and `frame` gives columns of all the training rows (for the ranking
    probe); `streamed` says whether `rows` is read from disk each epoch."""

    rows: TensorData | StreamedRows
    label_means: dict[str, float]
    item_clicks: torch.Tensor
    take: Callable[[np.ndarray], TensorData]
    frame: Callable[[list[str]], pl.DataFrame]
    streamed: bool


def training_input(
    features: FeatureSet,
    splits: list[str],
    tasks: dict[str, TaskConfig],
    cfg: TrainingSection,
    retrieval_label: str,
    distributed: Distributed = SINGLE,
) -> TrainingInput:
    """The training rows of `splits` (e.g. ["train"], or ["train", "validation"] to
    refit) for this process.

    One process and at most `cfg.in_memory_rows` rows (or no Parquet shards to stream
    from): tensors built once from the split frames.
    Otherwise the rows come from the splits' Parquet shards: this rank's share
    (`Distributed.share`) is read once when it has at most `in_memory_rows` rows, and
    streamed buffer by buffer each epoch when it has more."""
    transform = features.transform
    n_items = transform.items.ids.size
    folders = [features.split_folder(name) for name in splits]
    rows_total = sum(features.spec["rows"][name] for name in splits)
    fits = rows_total <= cfg.in_memory_rows
    if not distributed.enabled and (None in folders or fits):
        frames = [features.splits[name] for name in splits]
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        data = TensorData.from_frame(frame, tasks, transform)
        clicked = data.labels[retrieval_label] == 1
        clicks = torch.bincount(data.items[clicked], minlength=n_items).float()
        return TrainingInput(
            data,
            data.label_means(),
            clicks,
            lambda rows: data.take(torch.from_numpy(np.asarray(rows, dtype=np.int64))),
            lambda columns: frame.select(columns),
            streamed=False,
        )
    if None in folders:
        raise RecsysError(
            "distributed training reads the features from their Parquet shards, and these "
            "features were never saved",
            fix="run `recsys-mtl features PIPELINE.toml` first, then `torchrun ... train`",
        )
    shards = SplitShards([folder for folder in folders if folder is not None])
    ranges = distributed.share(shards.rows)
    own_rows = sum(b - a for a, b in ranges)
    streamed = own_rows > cfg.in_memory_rows
    rows: TensorData | StreamedRows
    if streamed:
        rows = StreamedRows(shards, ranges, tasks, transform, cfg.stream_buffer_rows)
    else:
        rows = read_rows(shards, ranges, tasks, transform)
    return TrainingInput(
        rows,
        split_label_means(shards, tasks),
        split_item_clicks(shards, retrieval_label, n_items),
        lambda numbers: TensorData.from_frame(shards.take(numbers), tasks, transform),
        lambda columns: shards.scan().select(columns).collect(),
        streamed=streamed,
    )
