"""Negative sampling for positive-only logs, uniform or popularity-weighted (vectorised
rejection sampling)."""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys_mtl.features.split import TRAIN
from recsys_mtl.features.vocab import FIRST

MAX_ROUNDS = 50
SAMPLERS = ("uniform", "popularity")


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return users.astype(np.int64) * n_items + items.astype(np.int64)


def popularity_weights(item_idx: np.ndarray, n_items: int, exponent: float) -> np.ndarray:
    """Sampling probabilities (n_items,) float64 proportional to count(item) ** exponent over
    the item indices in `item_idx` (one entry per positive).

    Items never seen, and the reserved indices 0 (padding) and 1 (unknown), get 0, so
    exponent 0 is uniform over the seen items; 1 is proportional to popularity, 0.75 the
    usual damping (word2vec). The result sums to 1.
    """
    if not np.isfinite(exponent):
        raise ValueError(f"exponent must be a finite number, got {exponent}")
    item_idx = np.asarray(item_idx)
    if item_idx.size and (item_idx.min() < 0 or item_idx.max() >= n_items):
        raise ValueError(
            f"item indices must lie in [0, {n_items}), got values in "
            f"[{item_idx.min()}, {item_idx.max()}]; pass the item vocabulary size as n_items"
        )
    counts = np.bincount(item_idx.astype(np.int64, copy=False), minlength=n_items)
    counts[:FIRST] = 0
    seen = counts > 0
    if not seen.any():
        raise ValueError(
            "no known item (index >= 2) among the positives, so popularity is undefined; "
            "use the uniform sampler"
        )
    weights = np.zeros(n_items, dtype=np.float64)
    weights[seen] = counts[seen].astype(np.float64) ** exponent
    return weights / weights.sum()


def sample_negatives(
    users: np.ndarray,
    n_items: int,
    per_row: int,
    exclude_users: np.ndarray,
    exclude_items: np.ndarray,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `per_row` items for every entry of `users` (N,), never an excluded (user, item)
    pair: uniformly over the known item indices [2, n_items) when `weights` is None, else
    item i with probability proportional to `weights[i]` ((n_items,), non-negative, zero at
    indices 0 and 1; e.g. from `popularity_weights`). An item of weight 0 is never drawn.

    Returns (row positions into `users` (M,), sampled item indices (M,)), ascending in row
    position, M <= N * per_row. Rejected draws are redrawn in whole-array rounds (at most
    MAX_ROUNDS); a user with no drawable item left gets no rows, and a draw still rejected
    after the last round is dropped.
    """
    excluded = _sorted_unique(pair_keys(exclude_users, exclude_items, n_items))
    if weights is None:
        drawable = np.zeros(n_items, dtype=bool)
        drawable[FIRST:] = True
        cumulative = None
    else:
        weights = _check_weights(weights, n_items)
        drawable = weights > 0
        cumulative = np.cumsum(weights)
        last_drawable = int(np.flatnonzero(drawable)[-1])
    # Draws are made grouped by user, so the lookups into the sorted excluded keys (user
    # major) stay cache-local, then put back in row order.
    by_user = np.argsort(users, kind="stable")
    draw_users = np.repeat(users[by_user], per_row).astype(np.int64)  # (N * per_row,)
    items = np.empty(draw_users.size, dtype=np.int64)
    keep = ~_exhausted(users, n_items, excluded, drawable)[np.repeat(by_user, per_row)]
    pending = np.flatnonzero(keep)
    for _ in range(MAX_ROUNDS):
        if pending.size == 0:
            break
        if cumulative is None:
            items[pending] = rng.integers(FIRST, n_items, pending.size)
        else:
            # inverse-CDF draw; the clip guards against u * total rounding up to total
            targets = rng.random(pending.size) * cumulative[-1]
            drawn = np.searchsorted(cumulative, targets, side="right")
            items[pending] = np.minimum(drawn, last_drawable)
        clash = _contains(excluded, pair_keys(draw_users[pending], items[pending], n_items))
        pending = pending[clash]
    keep[pending] = False
    in_row_order = np.empty((users.size, per_row), dtype=np.int64)
    in_row_order[by_user] = items.reshape(users.size, per_row)
    kept = np.empty((users.size, per_row), dtype=bool)
    kept[by_user] = keep.reshape(users.size, per_row)
    rows = np.repeat(np.arange(users.size), per_row)
    return rows[kept.ravel()], in_row_order[kept]


def negatives_frame(
    positives: pl.DataFrame,
    n_items: int,
    per_positive: int,
    seed: int,
    *,
    sampler: str = "uniform",
    exponent: float = 0.75,
) -> pl.DataFrame:
    """Negatives for positives with columns user_idx, item_idx, timestamp, split (others
    are copied, e.g. user_id).

    `sampler` "uniform" draws over all known items; "popularity" draws item i with
    probability count(i) ** exponent, counted over the TRAIN positives only, so later
    events never shape the negatives (an item seen only in validation/test is never drawn).
    Negatives of split s exclude the user's positives in splits <= s, so training never
    learns from later events, and a validation/test negative is never a known positive.
    Each negative copies its positive's timestamp and split; labels are click = 0,
    purchase = 0, rating = null. The same inputs and seed give the same frame.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown negative sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    rng = np.random.default_rng(seed)
    users = positives["user_idx"].to_numpy()
    items = positives["item_idx"].to_numpy()
    splits = positives["split"].to_numpy()
    weights = None
    if sampler == "popularity" and positives.height:
        weights = popularity_weights(items[splits == TRAIN], n_items, exponent)
    parts = [_with_items(positives.clear(), np.empty(0, dtype=np.int64))]
    for split in np.unique(splits):  # at most three splits, each one vectorised
        in_split = np.flatnonzero(splits == split)
        known = splits <= split
        rows, sampled = sample_negatives(
            users[in_split], n_items, per_positive, users[known], items[known], rng, weights
        )
        parts.append(_with_items(positives[in_split[rows]], sampled))
    return pl.concat(parts).with_columns(
        pl.lit(0, pl.Int8).alias("click"),
        pl.lit(0, pl.Int8).alias("purchase"),
        pl.lit(None, pl.Float32).alias("rating"),
    )


def _with_items(source: pl.DataFrame, items: np.ndarray) -> pl.DataFrame:
    """`source` with its item_idx column replaced by `items` (moved to the end, Int32)."""
    return source.select(pl.exclude("item_idx")).with_columns(
        pl.Series("item_idx", items.astype(np.int32))
    )


def _check_weights(weights: np.ndarray, n_items: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_items,):
        raise ValueError(f"weights must have shape ({n_items},), got {weights.shape}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative")
    if weights[:FIRST].any():
        raise ValueError(
            "weights of the reserved indices 0 (padding) and 1 (unknown) must be 0, got "
            f"{weights[:FIRST].tolist()}"
        )
    if not weights.any():
        raise ValueError("weights are all 0: no item can be drawn")
    return weights


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values)
    first = np.ones(ordered.size, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def _contains(sorted_unique: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(len(values),) bool: each value occurs in `sorted_unique`."""
    if sorted_unique.size == 0:
        return np.zeros(values.size, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_unique, values), sorted_unique.size - 1)
    return sorted_unique[at] == values


def _exhausted(
    users: np.ndarray, n_items: int, excluded: np.ndarray, drawable: np.ndarray
) -> np.ndarray:
    """(N,) bool: the user of each entry has every drawable item excluded."""
    excluded = excluded[drawable[excluded % n_items]]
    owners = excluded // n_items  # sorted, as `excluded` is
    first = np.ones(owners.size, dtype=bool)
    np.not_equal(owners[1:], owners[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    per_owner = np.diff(starts, append=owners.size)  # drawable items each owner excludes
    full = owners[starts[per_owner == np.count_nonzero(drawable)]]
    return _contains(full, users.astype(np.int64))
