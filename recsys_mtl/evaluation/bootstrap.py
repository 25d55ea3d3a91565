"""User-level bootstrap of evaluation metrics, vectorised over replicates, rows and users.

The resampling unit is the user, not the row: one user's impressions (and ranking
results) are correlated, so resampling rows independently would understate the
variance and give intervals that are too narrow. A replicate draws U users with
replacement out of U; it is stored as a vector of multinomial counts over users,
`counts` `(R, U)`, each row summing to U, and a row of the test set weighs
`counts[r, row_user[row]]` in replicate r (a user drawn twice counts twice, a user not
drawn drops out).

The same `counts` are shared by every system scored on the same test set, so replicate r
of the model and replicate r of a baseline see exactly the same users: their difference
is paired (`paired_difference_interval`), and the user-to-user variation common to both
cancels out instead of widening the interval.

Row-level means aggregate per user first and then take one matrix product, so they cost
O(R * U + N) rather than O(R * N); the AUC sorts once and loops over chunks of
replicates only.
"""

from __future__ import annotations

import numpy as np

from recsys_mtl.evaluation.metrics import (
    _as_1d,
    _binary_labels,
    _same_length,
    _scores_without_nan,
)

__all__ = [
    "bootstrap_auc",
    "bootstrap_mean",
    "bootstrap_rmse",
    "paired_difference_interval",
    "percentile_interval",
    "resample_counts",
]

_FLOAT32_EXACT = 2**24  # float32 holds every integer up to here exactly


# --------------------------------------------------------------------------- helpers


def _check_counts(counts: object) -> np.ndarray:
    """Bootstrap counts `(R, U)`, validated (2-D, non-negative)."""
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(
            f"`counts` must be (resamples, users), got shape {counts.shape}. "
            "Draw it with resample_counts(n_users, n_resamples, seed)."
        )
    if np.any(counts < 0):
        raise ValueError("`counts` must be non-negative (multinomial draws over users).")
    return counts


def _check_row_user(row_user: object, n_rows: int, n_users: int) -> np.ndarray:
    """`row_user` `(N,)` as int64 indices into 0..U-1 (the columns of `counts`)."""
    row_user = _as_1d("row_user", row_user)
    if len(row_user) != n_rows:
        raise ValueError(
            f"`row_user` must give the user of every row: length {len(row_user)} != {n_rows}."
        )
    if not np.issubdtype(row_user.dtype, np.integer):
        raise ValueError(
            f"`row_user` must be integer user indices, got {row_user.dtype}. Map user ids "
            "to 0..U-1 first (e.g. np.unique(users, return_inverse=True))."
        )
    row_user = row_user.astype(np.int64, copy=False)
    if row_user.size and (row_user.min() < 0 or row_user.max() >= n_users):
        raise ValueError(
            f"`row_user` must lie in 0..{n_users - 1} (the columns of `counts`), found "
            f"{int(row_user.min())}..{int(row_user.max())}. Draw `counts` over all users."
        )
    return row_user


# --------------------------------------------------------------------------- resampling


def resample_counts(n_users: int, n_resamples: int, seed: int) -> np.ndarray:
    """Multinomial bootstrap counts over users, `(R, U)` float32; each row sums to U.

    Row r says how many times each of the `n_users` users is drawn in replicate r. The
    counts are small integers, exact in float32 (row sums up to 2**24).
    """
    n_users, n_resamples = int(n_users), int(n_resamples)
    if n_users < 1 or n_resamples < 1:
        raise ValueError(
            f"`n_users` and `n_resamples` must be >= 1, got {n_users} and {n_resamples}."
        )
    if n_users > _FLOAT32_EXACT:
        raise ValueError(
            f"`n_users`={n_users} exceeds 2**24, beyond which float32 counts are not exact."
        )
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_resamples)
    return draws.astype(np.float32)


# --------------------------------------------------------------------------- row means


def bootstrap_mean(
    values: np.ndarray,
    row_user: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted mean of `values` `(N,)` in every replicate, `(R,)`.

    Row i weighs `counts[r, row_user[i]] * weights[i]` in replicate r (`weights` `(N,)`,
    non-negative, default 1). Rows whose value is NaN are left out. A replicate whose
    total weight is 0 gives NaN. `row_user` `(N,)` indexes the columns of `counts`
    `(R, U)`. Cost O(R * U + N): sums are aggregated per user, then one matrix product.
    """
    values = _as_1d("values", values, dtype=np.float64)
    counts = _check_counts(counts)
    row_user = _check_row_user(row_user, len(values), counts.shape[1])
    if weights is None:
        row_weight = np.ones(len(values))
    else:
        row_weight = _as_1d("weights", weights, dtype=np.float64)
        _same_length(values=values, weights=row_weight)
        if not np.all(np.isfinite(row_weight) & (row_weight >= 0)):
            raise ValueError("`weights` must be finite and non-negative.")

    present = ~np.isnan(values)
    users, w = row_user[present], row_weight[present]
    n_users = counts.shape[1]
    weighted_sum = np.bincount(users, weights=w * values[present], minlength=n_users)  # (U,)
    weight_sum = np.bincount(users, weights=w, minlength=n_users)  # (U,)

    counts64 = counts.astype(np.float64, copy=False)
    numerator = counts64 @ weighted_sum  # (R,)
    denominator = counts64 @ weight_sum  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def bootstrap_rmse(
    y: np.ndarray, pred: np.ndarray, row_user: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Root mean squared error of `pred` against `y` (both `(N,)`) per replicate, `(R,)`.

    sqrt of `bootstrap_mean` of the squared errors; rows where either is NaN are left out.
    """
    y = _as_1d("y", y, dtype=np.float64)
    pred = _as_1d("pred", pred, dtype=np.float64)
    _same_length(y=y, pred=pred)
    return np.sqrt(bootstrap_mean((pred - y) ** 2, row_user, counts))


# --------------------------------------------------------------------------- AUC


def bootstrap_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    row_user: np.ndarray,
    counts: np.ndarray,
    chunk: int = 16,
) -> np.ndarray:
    """Weighted Mann–Whitney AUC of `scores` `(N,)` for binary `labels` `(N,)` per replicate.

    Returns `(R,)`. In replicate r, row i weighs w_i = `counts[r, row_user[i]]`; a
    positive/negative pair weighs w_pos * w_neg and counts 1 if the positive scores
    higher, 1/2 on a tie. With all counts 1 this is `metrics.auc`. NaN where a replicate
    has no positive or no negative weight.

    The rows are sorted by score once; `chunk` replicates at a time get a `(chunk, N)`
    float32 weight matrix, summed per tie group with `np.add.reduceat`.
    """
    positive = _binary_labels(labels)
    scores = _scores_without_nan("scores", scores)
    _same_length(labels=positive, scores=scores)
    counts = _check_counts(counts)
    row_user = _check_row_user(row_user, len(scores), counts.shape[1])
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer, got {chunk}.")
    n_resamples = counts.shape[0]
    result = np.full(n_resamples, np.nan)
    if len(scores) == 0:
        return result

    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    is_pos = positive[order].astype(np.float32)  # (N,)
    sorted_user = row_user[order]  # (N,)
    new_group = np.empty(len(scores), dtype=bool)
    new_group[0] = True
    new_group[1:] = sorted_scores[1:] != sorted_scores[:-1]
    group_starts = np.flatnonzero(new_group)  # (T,) first sorted position of each tie group

    counts32 = counts.astype(np.float32, copy=False)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        weight = counts32[start:stop][:, sorted_user]  # (C, N), already in score order
        pos_weight = weight * is_pos
        neg_weight = weight - pos_weight
        # Per tie group; sums of small integers, exact in float32 below 2**24.
        pos_group = np.add.reduceat(pos_weight, group_starts, axis=1).astype(np.float64)
        neg_group = np.add.reduceat(neg_weight, group_starts, axis=1).astype(np.float64)
        neg_before = np.cumsum(neg_group, axis=1) - neg_group  # negatives scored lower
        numerator = np.sum(pos_group * (neg_before + 0.5 * neg_group), axis=1)  # (C,)
        total_pos = pos_group.sum(axis=1)
        total_neg = neg_group.sum(axis=1)
        valid = (total_pos > 0) & (total_neg > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[start:stop] = np.where(valid, numerator / (total_pos * total_neg), np.nan)
    return result


# --------------------------------------------------------------------------- intervals


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `replicates` `(R,)` at confidence `level`.

    The (1 - level) / 2 and 1 - (1 - level) / 2 percentiles, ignoring NaN replicates;
    (nan, nan) when every replicate is NaN (or there are none).
    """
    replicates = _as_1d("replicates", replicates, dtype=np.float64)
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must lie strictly between 0 and 1 (e.g. 0.95), got {level}.")
    if np.all(np.isnan(replicates)):
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.nanpercentile(replicates, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_difference_interval(
    model_reps: np.ndarray, baseline_reps: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of `model_reps - baseline_reps`, both `(R,)`.

    Both must come from the same `counts` (replicate r of each saw the same users), so
    the difference is paired.
    """
    model_reps = _as_1d("model_reps", model_reps, dtype=np.float64)
    baseline_reps = _as_1d("baseline_reps", baseline_reps, dtype=np.float64)
    _same_length(model_reps=model_reps, baseline_reps=baseline_reps)
    return percentile_interval(model_reps - baseline_reps, level)
