"""Pointwise, calibration, ranking and beyond-accuracy metrics in plain numpy, vectorised
over rows and users.

Pointwise metrics score one prediction per impression (`auc`, `gauc`, `per_user_auc`,
`log_loss`, `rmse`, `mae`). Calibration metrics compare predicted probabilities with
observed positive rates (`calibration_curve`, `expected_calibration_error`,
`calibration_ratio`). Ranking metrics score each user's retrieved top-K list against the
user's held-out relevant items, given in CSR form (`ranking_metrics`,
`per_user_ranking`); beyond-accuracy metrics describe the lists themselves
(`catalogue_coverage`, `mean_popularity`). No Python loop runs per row or per user; only
per cut-off k or per bin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "auc",
    "calibration_curve",
    "calibration_ratio",
    "catalogue_coverage",
    "expected_calibration_error",
    "gauc",
    "log_loss",
    "mae",
    "mean_popularity",
    "per_user_auc",
    "per_user_ranking",
    "ranking_metrics",
    "rmse",
]


# --------------------------------------------------------------------------- helpers


def _as_1d(name: str, values: object, dtype: type | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {array.shape}.")
    return array


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"Inputs must have the same length, got {shown}.")


def _binary_labels(labels: object) -> np.ndarray:
    """Labels as a bool array `(N,)`; anything other than 0/1 (or bool) is an error."""
    array = _as_1d("labels", labels)
    if array.dtype == bool:
        return array
    is_one = array == 1
    if not np.all(is_one | (array == 0)):
        bad = array[~(is_one | (array == 0))][:3]
        raise ValueError(
            f"`labels` must be binary (0/1), found values such as {bad.tolist()}. "
            "Drop rows whose label is unknown before scoring."
        )
    return is_one


def _tie_average_ranks(sorted_keys: np.ndarray, *more_keys: np.ndarray) -> np.ndarray:
    """1-based ranks of already-sorted rows, tied rows sharing their average rank.

    Rows `i` and `i+1` are tied when they are equal in every key array. Shape `(N,)`.
    """
    n = len(sorted_keys)
    new_run = np.empty(n, dtype=bool)
    new_run[:1] = True
    new_run[1:] = sorted_keys[1:] != sorted_keys[:-1]
    for keys in more_keys:
        new_run[1:] |= keys[1:] != keys[:-1]
    run_starts = np.flatnonzero(new_run)  # 0-based position of each run's first row
    run_ends = np.append(run_starts[1:], n)  # exclusive
    run_ids = np.cumsum(new_run) - 1
    # A run covering positions [a, b) holds ranks a+1 .. b; their mean is (a + 1 + b) / 2.
    return ((run_starts + 1 + run_ends) / 2.0)[run_ids]


def _scores_without_nan(name: str, values: object) -> np.ndarray:
    array = _as_1d(name, values, dtype=np.float64)
    if np.isnan(array).any():
        raise ValueError(
            f"`{name}` contains NaN at rows {np.flatnonzero(np.isnan(array))[:3].tolist()}; "
            "a model that diverged in training predicts NaN. Check the training losses."
        )
    return array


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


# --------------------------------------------------------------------------- pointwise


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` `(N,)` for binary `labels` `(N,)`.

    The Mann–Whitney statistic: a tied positive/negative pair counts one half. NaN when
    only one class is present.
    """
    positive = _binary_labels(labels)
    scores = _scores_without_nan("scores", scores)
    _same_length(labels=positive, scores=scores)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = _tie_average_ranks(scores[order])
    pos_rank_sum = ranks[positive[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_user_auc(
    users: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC of each user that has both a positive and a negative impression.

    `users`, `labels`, `scores` are `(N,)`; users may be any sortable ids. Returns three
    `(G_q,)` arrays over the G_q qualifying users, in `np.unique(users)` order:
    `(group, user_auc, n_rows)`, where `group` indexes the user in `np.unique(users)`,
    `user_auc` is the Mann–Whitney AUC of the user's rows (ties count one half) and
    `n_rows` is the user's number of impressions. Users with one class only are left out;
    all three arrays are empty when no user qualifies.
    """
    positive = _binary_labels(labels)
    users = _as_1d("users", users)
    scores = _scores_without_nan("scores", scores)
    _same_length(users=users, labels=positive, scores=scores)
    if len(users) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0), np.empty(0, dtype=np.int64)

    _, group = np.unique(users, return_inverse=True)  # contiguous user index, (N,)
    group = group.reshape(-1)
    order = np.lexsort((scores, group))  # by user, then by score within the user
    group, scores, positive = group[order], scores[order], positive[order]

    n_groups = int(group[-1]) + 1
    n_rows = np.bincount(group, minlength=n_groups)  # (G,)
    n_pos = np.bincount(group, weights=positive, minlength=n_groups)  # (G,)
    n_neg = n_rows - n_pos
    group_start = np.concatenate(([0], np.cumsum(n_rows)[:-1]))  # (G,)

    # Ties are runs equal in both user and score, so a run never crosses a user boundary;
    # subtracting the user's first position turns global ranks into within-user ranks.
    ranks = _tie_average_ranks(group, scores) - group_start[group]
    pos_rank_sum = np.bincount(group, weights=ranks * positive, minlength=n_groups)

    qualifies = (n_pos > 0) & (n_neg > 0)
    n_pos, n_neg = n_pos[qualifies], n_neg[qualifies]
    user_auc = (pos_rank_sum[qualifies] - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.flatnonzero(qualifies), user_auc, n_rows[qualifies]


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-user AUC averaged with weights = the user's number of impressions.

    `users`, `labels`, `scores` are `(N,)`; users may be any sortable ids. Only users with
    both a positive and a negative impression take part (and only their impressions count
    in the weights), as in `per_user_auc`. NaN when no user qualifies.
    """
    _, user_auc, n_rows = per_user_auc(users, labels, scores)
    if user_auc.size == 0:
        return float("nan")
    return float(np.average(user_auc, weights=n_rows))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities `probs` `(N,)`, clipped to [eps, 1 - eps].

    NaN for empty input.
    """
    positive = _binary_labels(labels)
    probs = _as_1d("probs", probs, dtype=np.float64)
    _same_length(labels=positive, probs=probs)
    probs = np.clip(probs, eps, 1.0 - eps)
    losses = -np.where(positive, np.log(probs), np.log1p(-probs))
    return _mean_or_nan(losses)


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error between targets `y` `(N,)` and predictions `pred` `(N,)`."""
    y = _as_1d("y", y, dtype=np.float64)
    pred = _as_1d("pred", pred, dtype=np.float64)
    _same_length(y=y, pred=pred)
    return float(np.sqrt(_mean_or_nan((pred - y) ** 2)))


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error between targets `y` `(N,)` and predictions `pred` `(N,)`."""
    y = _as_1d("y", y, dtype=np.float64)
    pred = _as_1d("pred", pred, dtype=np.float64)
    _same_length(y=y, pred=pred)
    return _mean_or_nan(np.abs(pred - y))


# --------------------------------------------------------------------------- calibration


def _labels_and_probs(labels: object, probs: object) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels `(N,)` bool and probabilities `(N,)` float64 in [0, 1]."""
    positive = _binary_labels(labels)
    probs = _scores_without_nan("probs", probs)
    _same_length(labels=positive, probs=probs)
    outside = (probs < 0.0) | (probs > 1.0)
    if outside.any():
        raise ValueError(
            f"`probs` must be probabilities in [0, 1], found values such as "
            f"{probs[outside][:3].tolist()}. Apply a sigmoid to logits before scoring."
        )
    return positive, probs


def calibration_curve(
    labels: np.ndarray, probs: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability curve of probabilities `probs` `(N,)` for binary `labels` `(N,)`.

    `bins` equal-width bins split [0, 1]; bin b holds b / bins <= p < (b + 1) / bins
    (computed as floor(p * bins)), and p = 1.0 goes in the last bin. Returns three
    `(bins,)` arrays: the mean predicted probability of each bin, its observed positive
    rate (both NaN for an empty bin) and its row count (int64).
    """
    positive, probs = _labels_and_probs(labels, probs)
    bins = int(bins)
    if bins < 1:
        raise ValueError(f"`bins` must be a positive integer, got {bins}.")
    which = np.minimum((probs * bins).astype(np.int64), bins - 1)  # (N,)
    count = np.bincount(which, minlength=bins)  # (bins,)
    pred_sum = np.bincount(which, weights=probs, minlength=bins)
    pos_sum = np.bincount(which, weights=positive, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.where(count > 0, pred_sum / count, np.nan)
        observed = np.where(count > 0, pos_sum / count, np.nan)
    return mean_pred, observed, count


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over `bins` equal-width bins (as in `calibration_curve`).

    ECE = sum over non-empty bins b of (count_b / N) * |mean_pred_b - observed_b|, with
    `labels` and `probs` `(N,)`. NaN for empty input.
    """
    mean_pred, observed, count = calibration_curve(labels, probs, bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    filled = count > 0
    gaps = np.abs(mean_pred[filled] - observed[filled])
    return float(np.sum(count[filled] / total * gaps))


def calibration_ratio(labels: np.ndarray, probs: np.ndarray) -> float:
    """Predicted over observed positive rate: mean(`probs`) / mean(`labels`), both `(N,)`.

    Above 1 the model over-predicts, below 1 it under-predicts. NaN for empty input or
    when no label is positive.
    """
    positive, probs = _labels_and_probs(labels, probs)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    return float(probs.sum() / n_pos)


# --------------------------------------------------------------------------- ranking


def _hit_matrix(
    top_items: np.ndarray, relevant_indptr: np.ndarray, relevant_items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which retrieved items are relevant, `(U, K_max)` bool, and relevant counts `(U,)`.

    A repeated item counts once (its first position); so does a repeated relevant item.
    """
    n_users = top_items.shape[0]
    max_item = max(int(top_items.max(initial=-1)), int(relevant_items.max(initial=-1)))
    bound = max_item + 1  # (user, item) -> user * bound + item is unique for item >= 0

    rel_users = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(relevant_indptr))
    rel_keys = np.unique(rel_users * bound + relevant_items)  # sorted, deduplicated
    n_relevant = np.bincount(rel_keys // bound, minlength=n_users)

    top_keys = np.arange(n_users, dtype=np.int64)[:, None] * bound + top_items
    # -1 padding would alias the previous user's item `bound - 1`: mask it explicitly.
    hits = (top_items >= 0) & np.isin(top_keys, rel_keys)
    if hits.any():
        # Keep only the first occurrence of each (user, item) key; row-major flattening
        # makes np.unique's first index the earliest position in that user's list.
        _, first = np.unique(top_keys.reshape(-1), return_index=True)
        is_first = np.zeros(top_keys.size, dtype=bool)
        is_first[first] = True
        hits &= is_first.reshape(top_keys.shape)
    return hits, n_relevant


def per_user_ranking(
    top_items: np.ndarray,
    relevant_indptr: np.ndarray,
    relevant_items: np.ndarray,
    ks: Sequence[int],
) -> dict[str, np.ndarray]:
    """Per-user `recall@k`, `ndcg@k`, `hitrate@k`, `precision@k` and `mrr@k`, each `(U,)`;
    NaN for users with no relevant item.

    `top_items` `(U, K_max)` holds each user's ranked item indices, best first, padded with
    -1 (never a hit). User u's relevant items are
    `relevant_items[relevant_indptr[u]:relevant_indptr[u + 1]]` (CSR; `relevant_indptr` is
    `(U + 1,)`). With binary relevance and `n_rel` relevant items:

    - recall@k = hits in the top k / n_rel (not / min(k, n_rel), so it can stay below 1
      when n_rel > k);
    - ndcg@k = DCG / IDCG, DCG = sum over hit positions i < k (0-based) of 1 / log2(i + 2),
      IDCG = sum over i < min(k, n_rel) of 1 / log2(i + 2);
    - hitrate@k = 1 if any of the top k is relevant, else 0;
    - precision@k = hits in the top k / k (padding counts as a miss);
    - mrr@k = 1 / (1-based position of the first hit within the top k), 0 if none.

    A repeated item is a hit at its first position only.
    """
    top_items = np.asarray(top_items)
    relevant_indptr = _as_1d("relevant_indptr", relevant_indptr)
    relevant_items = _as_1d("relevant_items", relevant_items)
    if top_items.ndim != 2:
        raise ValueError(f"`top_items` must be (users, K_max), got shape {top_items.shape}.")
    n_users, k_max = top_items.shape
    if not (
        np.issubdtype(top_items.dtype, np.integer)
        and np.issubdtype(relevant_indptr.dtype, np.integer)
        and np.issubdtype(relevant_items.dtype, np.integer)
    ):
        raise ValueError(
            "`top_items`, `relevant_indptr` and `relevant_items` must be integer arrays "
            f"(got {top_items.dtype}, {relevant_indptr.dtype}, {relevant_items.dtype})."
        )
    top_items = top_items.astype(np.int64, copy=False)
    relevant_items = relevant_items.astype(np.int64, copy=False)
    if (
        len(relevant_indptr) != n_users + 1
        or relevant_indptr[0] != 0
        or relevant_indptr[-1] != len(relevant_items)
        or np.any(np.diff(relevant_indptr) < 0)
    ):
        raise ValueError(
            f"`relevant_indptr` must be a CSR index pointer of length users + 1 = "
            f"{n_users + 1}, starting at 0, non-decreasing and ending at "
            f"len(relevant_items) = {len(relevant_items)}."
        )
    if np.any(relevant_items < 0) or np.any(top_items < -1):
        raise ValueError("Item indices must be >= 0 (and -1 only as padding in `top_items`).")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > k_max:
        raise ValueError(
            f"Every cut-off in ks={ks} must lie in 1..{k_max} (the columns of `top_items`). "
            "Retrieve at least max(ks) items per user, or lower the cut-offs."
        )

    hits, n_relevant = _hit_matrix(top_items, relevant_indptr, relevant_items)
    has_relevant = n_relevant > 0
    n_rel_safe = np.maximum(n_relevant, 1)

    discounts = 1.0 / np.log2(np.arange(k_max) + 2.0)  # (K_max,)
    ideal_dcg = np.concatenate(([0.0], np.cumsum(discounts)))  # ideal_dcg[j]: j hits on top
    hits_cum = np.cumsum(hits, axis=1)  # (U, K_max)
    dcg_cum = np.cumsum(hits * discounts, axis=1)  # (U, K_max)
    # 0-based position of each user's first hit; K_max when there is none.
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), k_max)  # (U,)

    result: dict[str, np.ndarray] = {}
    for k in ks:
        n_hits = hits_cum[:, k - 1]
        idcg = ideal_dcg[np.minimum(k, n_relevant)]
        metrics = {
            "recall": n_hits / n_rel_safe,
            "ndcg": dcg_cum[:, k - 1] / np.where(has_relevant, idcg, 1.0),
            "hitrate": (n_hits > 0).astype(np.float64),
            "precision": n_hits / k,
            "mrr": np.where(first_hit < k, 1.0 / (first_hit + 1.0), 0.0),
        }
        for name, values in metrics.items():
            result[f"{name}@{k}"] = np.where(has_relevant, values, np.nan)
    return result


def ranking_metrics(
    top_items: np.ndarray,
    relevant_indptr: np.ndarray,
    relevant_items: np.ndarray,
    ks: Sequence[int],
) -> dict[str, float]:
    """Mean `recall@k`, `ndcg@k`, `hitrate@k`, `precision@k`, `mrr@k` over users with at
    least one relevant item.

    Inputs and definitions as in `per_user_ranking` (recall divides by the user's number
    of relevant items). Every value is NaN when no user has a relevant item.
    """
    per_user = per_user_ranking(top_items, relevant_indptr, relevant_items, ks)
    return {name: _mean_or_nan(values[~np.isnan(values)]) for name, values in per_user.items()}


# --------------------------------------------------------------------------- beyond accuracy


def _top_k_items(top_items: object, k: int) -> np.ndarray:
    """The first `k` columns of integer `top_items` `(U, K_max)`, validated, as int64."""
    top_items = np.asarray(top_items)
    if top_items.ndim != 2:
        raise ValueError(f"`top_items` must be (users, K_max), got shape {top_items.shape}.")
    if not np.issubdtype(top_items.dtype, np.integer):
        raise ValueError(f"`top_items` must be an integer array, got {top_items.dtype}.")
    k = int(k)
    if not 1 <= k <= top_items.shape[1]:
        raise ValueError(
            f"Cut-off k={k} must lie in 1..{top_items.shape[1]} (the columns of "
            "`top_items`). Retrieve at least k items per user, or lower the cut-off."
        )
    top = top_items[:, :k].astype(np.int64, copy=False)
    if np.any(top < -1):
        raise ValueError("Item indices must be >= 0 (and -1 only as padding in `top_items`).")
    return top


def catalogue_coverage(top_items: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in some user's top k.

    Distinct valid items (>= 0; -1 is padding) among the first `k` columns of `top_items`
    `(U, K_max)`, divided by the catalogue size `n_items`.
    """
    top = _top_k_items(top_items, k)
    n_items = int(n_items)
    if n_items < 1:
        raise ValueError(f"`n_items` must be the catalogue size (>= 1), got {n_items}.")
    distinct = np.unique(top[top >= 0])
    if distinct.size and distinct[-1] >= n_items:
        raise ValueError(
            f"`top_items` holds item {int(distinct[-1])}, outside a catalogue of "
            f"n_items={n_items}. Pass the size of the item index the lists come from."
        )
    return distinct.size / n_items


def mean_popularity(top_items: np.ndarray, popularity: np.ndarray, k: int) -> float:
    """Mean popularity of the recommended items.

    Mean of `popularity[item]` over the valid entries (>= 0; -1 is padding) in the first
    `k` columns of `top_items` `(U, K_max)`; `popularity` `(n_items,)` is indexed by the
    same item indices. NaN when there is no valid entry.
    """
    top = _top_k_items(top_items, k)
    popularity = _as_1d("popularity", popularity, dtype=np.float64)
    items = top[top >= 0]
    if items.size and items.max() >= len(popularity):
        raise ValueError(
            f"`top_items` holds item {int(items.max())}, but `popularity` has only "
            f"{len(popularity)} entries. Index popularity by the same item indices."
        )
    return _mean_or_nan(popularity[items])
