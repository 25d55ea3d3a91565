"""Uniform negative sampling for positive-only logs (vectorised rejection sampling)."""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys_mtl.features.vocab import FIRST

MAX_ROUNDS = 50


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return users.astype(np.int64) * n_items + items.astype(np.int64)


def sample_negatives(
    users: np.ndarray,
    n_items: int,
    per_row: int,
    exclude_users: np.ndarray,
    exclude_items: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `per_row` items for every entry of `users` (N,), uniformly over the known item
    indices [2, n_items), never an excluded (user, item) pair.

    Returns (row positions into `users` (N * per_row,), sampled item indices). Rejected
    draws are redrawn in whole-array rounds; a user with no item left gets fewer rows.
    """
    rows = np.repeat(np.arange(users.size), per_row)
    excluded = np.unique(pair_keys(exclude_users, exclude_items, n_items))
    items = np.empty(rows.size, dtype=np.int64)
    pending = np.arange(rows.size)
    for _ in range(MAX_ROUNDS):
        items[pending] = rng.integers(FIRST, n_items, pending.size)
        clash = np.isin(pair_keys(users[rows[pending]], items[pending], n_items), excluded)
        pending = pending[clash]
        if pending.size == 0:
            break
    keep = np.ones(rows.size, dtype=bool)
    keep[pending] = False
    return rows[keep], items[keep]


def negatives_frame(
    positives: pl.DataFrame, n_items: int, per_positive: int, seed: int
) -> pl.DataFrame:
    """Negatives for positives with columns user_idx, item_idx, timestamp, split (others
    are copied, e.g. user_id).

    Negatives of split s exclude the user's positives in splits <= s, so training never
    learns from later events, and a validation/test negative is never a known positive.
    Each negative copies its positive's timestamp and split; labels are click = 0,
    purchase = 0, rating = null.
    """
    rng = np.random.default_rng(seed)
    users = positives["user_idx"].to_numpy()
    items = positives["item_idx"].to_numpy()
    splits = positives["split"].to_numpy()
    parts = []
    for split in np.unique(splits):
        in_split = np.flatnonzero(splits == split)
        known = splits <= split
        rows, sampled = sample_negatives(
            users[in_split], n_items, per_positive, users[known], items[known], rng
        )
        source = positives[in_split[rows]]
        parts.append(
            source.select(pl.exclude("item_idx")).with_columns(
                pl.Series("item_idx", sampled.astype(np.int32))
            )
        )
    return pl.concat(parts).with_columns(
        pl.lit(0, pl.Int8).alias("click"),
        pl.lit(0, pl.Int8).alias("purchase"),
        pl.lit(None, pl.Float32).alias("rating"),
    )
