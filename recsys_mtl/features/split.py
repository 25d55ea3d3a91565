"""Split impressions into train / validation / test: per user in time, one cut in time for
everybody, or at random."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}
SPLIT_KINDS = ("per_user_temporal", "global_time", "random")

_ROW = "__split_row__"  # temporary input-order column, the tie-breaker for equal timestamps
_EPS = 1e-9  # so that e.g. 10 * 0.3 = 2.9999999999999996 floors to 3


def assign_split(
    frame: pl.DataFrame,
    kind: str,
    *,
    validation_fraction: float,
    test_fraction: float,
    validation_last_n: int = 0,
    test_last_n: int = 0,
    seed: int = 0,
) -> pl.DataFrame:
    """Add a `split` column (Int8: TRAIN = 0, VALIDATION = 1, TEST = 2); row order is kept.

    Kinds (`SPLIT_KINDS`):

    - "per_user_temporal" (needs `user_id`, `timestamp`): each user's latest events are
      test, the ones just before validation, the rest train. A user with n events has
      `test_last_n` test rows when > 0, else floor(n * test_fraction); likewise
      `validation_last_n` / `validation_fraction` for validation. At most n - 1 rows of a
      user leave train (test is served first), so every user keeps a training row. Ties in
      time keep input order (the later row in the input counts as the later event).
    - "global_time" (needs `timestamp`): one cut in time for everybody. With N rows sorted
      by time, the test cut is the timestamp at position N - floor(N * test_fraction) (the
      1 - test_fraction quantile) and the validation cut the one at position
      N - floor(N * (test_fraction + validation_fraction)); rows at or after the test cut
      are test, rows in [validation cut, test cut) validation. Rows sharing a timestamp
      always fall on the same side, so a tie at a cut moves all of it to the later split.
    - "random": each row independently is test with probability `test_fraction`,
      validation with probability `validation_fraction`, drawn from
      `np.random.default_rng(seed)` in row order (same frame and seed, same split).

    `validation_last_n` / `test_last_n` apply to "per_user_temporal" only; `seed` to
    "random" only.
    """
    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {kind!r}; use one of {', '.join(SPLIT_KINDS)}")
    _check_fractions(validation_fraction, test_fraction)
    if validation_last_n < 0 or test_last_n < 0:
        raise ValueError(
            f"validation_last_n and test_last_n must be >= 0 (0: use the fraction), got "
            f"{validation_last_n} and {test_last_n}"
        )
    if kind != "per_user_temporal" and (validation_last_n or test_last_n):
        raise ValueError(
            f"validation_last_n/test_last_n apply to the per_user_temporal split, not {kind!r}; "
            "remove them or use kind='per_user_temporal'"
        )
    split: pl.Series | pl.Expr
    if kind == "per_user_temporal":
        split = _per_user_temporal(
            frame, validation_fraction, test_fraction, validation_last_n, test_last_n
        )
    elif kind == "global_time":
        split = _global_time(frame, validation_fraction, test_fraction)
    else:
        split = _random(frame.height, validation_fraction, test_fraction, seed)
    return frame.with_columns(split.alias("split"))


def temporal_split(
    frame: pl.DataFrame, validation_fraction: float, test_fraction: float
) -> pl.DataFrame:
    """Per-user temporal split by fraction: `assign_split(frame, "per_user_temporal", ...)`.

    A user with n events has floor(n * test_fraction) test rows and
    floor(n * validation_fraction) validation rows; ties in time keep input order.
    """
    return assign_split(
        frame,
        "per_user_temporal",
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
    )


def _check_fractions(validation_fraction: float, test_fraction: float) -> None:
    for name, value in [
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ]:
        if not 0 <= value < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction + test_fraction = {validation_fraction + test_fraction} "
            "leaves nothing to train on; keep their sum below 1"
        )


def _per_user_temporal(
    frame: pl.DataFrame,
    validation_fraction: float,
    test_fraction: float,
    validation_last_n: int,
    test_last_n: int,
) -> pl.Series:
    rows = frame.height
    # one sort by (user, time, input position): ties in time keep input order
    order = (
        frame.select("user_id", "timestamp")
        .with_row_index(_ROW)
        .select(pl.arg_sort_by(["user_id", "timestamp", _ROW]))
        .to_series()
        .to_numpy()
    )
    users = frame.get_column("user_id").gather(order)
    starts = np.flatnonzero(users.ne_missing(users.shift(1)).to_numpy())  # (U,) run starts
    lengths = np.diff(starts, append=rows)
    n = np.repeat(lengths, lengths)  # (rows,) events of the row's user, in sorted order
    rank = np.arange(rows) - np.repeat(starts, lengths)  # 0 = the user's earliest event

    def held_out(last_n: int, fraction: float) -> np.ndarray:
        if last_n > 0:
            return np.full(rows, last_n, dtype=np.int64)
        return np.floor(n * fraction + _EPS).astype(np.int64)

    n_test = np.minimum(held_out(test_last_n, test_fraction), n - 1)
    n_val = np.minimum(held_out(validation_last_n, validation_fraction), n - 1 - n_test)
    sorted_codes = np.full(rows, TRAIN, dtype=np.int8)
    sorted_codes[rank >= n - n_test - n_val] = VALIDATION
    sorted_codes[rank >= n - n_test] = TEST
    codes = np.empty(rows, dtype=np.int8)
    codes[order] = sorted_codes
    return pl.Series("split", codes, dtype=pl.Int8)


def _global_time(frame: pl.DataFrame, validation_fraction: float, test_fraction: float) -> pl.Expr:
    rows = frame.height
    n_test = math.floor(rows * test_fraction + _EPS)
    n_out = max(n_test, min(rows, math.floor(rows * (test_fraction + validation_fraction) + _EPS)))
    if n_out == 0:
        return pl.lit(TRAIN, pl.Int8)
    timestamps = frame.get_column("timestamp")
    ordered = timestamps.sort()

    def at_or_after_cut(held_out: int) -> pl.Expr:
        cut = ordered[rows - held_out]
        return pl.col("timestamp") >= pl.lit(cut, dtype=timestamps.dtype)

    is_test = at_or_after_cut(n_test) if n_test else pl.lit(False)
    return (
        pl.when(is_test)
        .then(pl.lit(TEST))
        .when(at_or_after_cut(n_out))
        .then(pl.lit(VALIDATION))
        .otherwise(pl.lit(TRAIN))
        .cast(pl.Int8)
    )


def _random(rows: int, validation_fraction: float, test_fraction: float, seed: int) -> pl.Series:
    draws = np.random.default_rng(seed).random(rows)
    codes = np.full(rows, TRAIN, dtype=np.int8)
    codes[draws < test_fraction + validation_fraction] = VALIDATION
    codes[draws < test_fraction] = TEST
    return pl.Series("split", codes, dtype=pl.Int8)
