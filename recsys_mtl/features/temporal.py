"""Time features of an impression: hour and weekday (UTC), and recency buckets.

All are categorical indices (embedded in the model), computed from Int64 epoch seconds.
"""

from __future__ import annotations

import polars as pl

from recsys_mtl.features.vocab import FIRST, UNKNOWN

HOURS, WEEKDAYS = 24, 7
#: Recency buckets: "no earlier event", then floor(log2(1 + minutes)) capped.
RECENCY_LOG2_CAP = 24
RECENCY_SIZE = FIRST + 1 + RECENCY_LOG2_CAP + 1
SECONDS_PER_DAY = 86_400
#: 1970-01-01 was a Thursday; weekday 0 is Monday.
EPOCH_WEEKDAY = 3


def hour_index(timestamp: pl.Expr) -> pl.Expr:
    """Index of the UTC hour: FIRST + 0..23."""
    return ((timestamp // 3600) % HOURS + FIRST).cast(pl.Int32)


def weekday_index(timestamp: pl.Expr) -> pl.Expr:
    """Index of the UTC weekday (Monday = FIRST + 0)."""
    return ((timestamp // SECONDS_PER_DAY + EPOCH_WEEKDAY) % WEEKDAYS + FIRST).cast(pl.Int32)


def recency_index(timestamp: pl.Expr, previous: pl.Expr) -> pl.Expr:
    """Bucket of the time since `previous` (null: no earlier event -> FIRST).

    Bucket FIRST + 1 + floor(log2(1 + minutes)), capped; a negative gap (a request
    timestamp before the last known event) counts as zero.
    """
    minutes = ((timestamp - previous).clip(lower_bound=0) / 60.0).cast(pl.Float64)
    bucket = (1.0 + minutes).log(2).floor().clip(upper_bound=RECENCY_LOG2_CAP)
    return (
        pl.when(previous.is_null())
        .then(pl.lit(FIRST))
        .otherwise(bucket.cast(pl.Int32) + FIRST + 1)
        .fill_null(UNKNOWN)
        .cast(pl.Int32)
    )
