"""Per-user temporal split into train / validation / test."""

from __future__ import annotations

import polars as pl

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}


def temporal_split(
    frame: pl.DataFrame, validation_fraction: float, test_fraction: float
) -> pl.DataFrame:
    """Add a `split` column (Int8): each user's latest events go to test, the ones before
    to validation, the rest to train.

    A user with n events has floor(n * test_fraction) test rows and
    floor(n * validation_fraction) validation rows; ties in time keep input order.
    """
    rank = pl.int_range(pl.len()).over("user_id", order_by="timestamp")
    n = pl.len().over("user_id")
    n_test = (n * test_fraction + 1e-9).floor().cast(pl.Int64)
    n_val = (n * validation_fraction + 1e-9).floor().cast(pl.Int64)
    split = (
        pl.when(rank >= n - n_test)
        .then(pl.lit(TEST))
        .when(rank >= n - n_test - n_val)
        .then(pl.lit(VALIDATION))
        .otherwise(pl.lit(TRAIN))
        .cast(pl.Int8)
    )
    return frame.with_columns(split.alias("split"))
