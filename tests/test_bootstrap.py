"""User-level bootstrap against brute-force expansion (repeat each user's rows counts[u]
times and score the expanded data with the plain metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_mtl.evaluation.bootstrap import (
    bootstrap_auc,
    bootstrap_mean,
    bootstrap_rmse,
    paired_difference_interval,
    percentile_interval,
    resample_counts,
)
from recsys_mtl.evaluation.metrics import auc, rmse


def _expanded_rows(counts_row: np.ndarray, row_user: np.ndarray) -> np.ndarray:
    """Row indices with row i repeated counts_row[row_user[i]] times."""
    return np.repeat(np.arange(len(row_user)), counts_row[row_user].astype(np.int64))


def _random_rows(seed: int, n_users: int = 30, n_rows: int = 400):
    rng = np.random.default_rng(seed)
    row_user = rng.integers(0, n_users, size=n_rows)
    labels = rng.integers(0, 2, size=n_rows)
    scores = np.round(labels * 0.4 + rng.normal(size=n_rows), 1)  # many ties
    return rng, row_user, labels, scores


# --------------------------------------------------------------------------- counts


def test_resample_counts_sum_to_users_and_reproducible() -> None:
    counts = resample_counts(50, 20, seed=7)
    assert counts.shape == (20, 50) and counts.dtype == np.float32
    np.testing.assert_array_equal(counts.sum(axis=1), np.full(20, 50.0))
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    np.testing.assert_array_equal(counts, resample_counts(50, 20, seed=7))
    assert not np.array_equal(counts, resample_counts(50, 20, seed=8))
    # Some users are drawn twice or more and some not at all.
    assert counts.max() >= 2 and (counts == 0).any()
    with pytest.raises(ValueError, match="n_users"):
        resample_counts(0, 5, seed=0)


# --------------------------------------------------------------------------- AUC


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_auc_with_unit_counts_equals_auc(seed: int) -> None:
    _, row_user, labels, scores = _random_rows(seed)
    counts = np.ones((3, 30), dtype=np.float32)
    result = bootstrap_auc(labels, scores, row_user, counts, chunk=2)
    np.testing.assert_allclose(result, np.full(3, auc(labels, scores)), rtol=0, atol=1e-12)


def test_bootstrap_auc_hand_computed() -> None:
    # Rows: (user, label, score) = (0, 1, 0.9), (0, 0, 0.5), (1, 1, 0.5), (1, 0, 0.1)
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    row_user = np.array([0, 0, 1, 1])
    # counts [2, 1]: positives 0.9 (w 2), 0.5 (w 1); negatives 0.5 (w 2), 0.1 (w 1)
    #   0.9 beats both: 2 * (2 + 1) = 6; 0.5 ties 0.5 and beats 0.1: 1 * (2 * 0.5 + 1) = 2
    #   AUC = 8 / (3 * 3) = 8/9
    # counts [0, 2]: only user 1 -> perfect, 1.0; counts [2, 0]: only user 0 -> 1.0
    # counts [0, 0]: no weight at all -> NaN
    counts = np.array([[2, 1], [0, 2], [2, 0], [0, 0]], dtype=np.float32)
    result = bootstrap_auc(labels, scores, row_user, counts)
    np.testing.assert_allclose(result[:3], [8 / 9, 1.0, 1.0], atol=1e-12)
    assert np.isnan(result[3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_auc_matches_brute_force_expansion(seed: int) -> None:
    rng, row_user, labels, scores = _random_rows(seed)
    counts = resample_counts(30, 7, seed=seed).astype(np.float32)
    counts[0] = rng.integers(0, 4, size=30)  # an arbitrary (non-multinomial) count vector
    result = bootstrap_auc(labels, scores, row_user, counts, chunk=3)  # ragged last chunk
    for r in range(len(counts)):
        rows = _expanded_rows(counts[r], row_user)
        assert result[r] == pytest.approx(auc(labels[rows], scores[rows]), abs=1e-12), r


def test_bootstrap_auc_nan_when_one_class_drawn() -> None:
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.3, 0.7, 0.2, 0.6])
    row_user = np.array([0, 0, 1, 1])  # user 0 all positive, user 1 all negative
    counts = np.array([[2, 0], [0, 2], [1, 1]], dtype=np.float32)
    result = bootstrap_auc(labels, scores, row_user, counts)
    assert np.isnan(result[0]) and np.isnan(result[1])
    assert result[2] == pytest.approx(auc(labels, scores), abs=1e-12)  # 3/4


# --------------------------------------------------------------------------- means


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_mean_matches_brute_force_expansion(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_rows = 25, 300
    row_user = rng.integers(0, n_users, size=n_rows)
    values = rng.normal(size=n_rows)
    values[rng.random(n_rows) < 0.2] = np.nan  # absent rows
    weights = rng.integers(1, 5, size=n_rows).astype(float)
    counts = resample_counts(n_users, 6, seed=seed)

    plain = bootstrap_mean(values, row_user, counts)
    weighted = bootstrap_mean(values, row_user, counts, weights=weights)
    for r in range(len(counts)):
        rows = _expanded_rows(counts[r], row_user)
        rows = rows[~np.isnan(values[rows])]
        assert plain[r] == pytest.approx(values[rows].mean(), rel=1e-12), r
        expected = np.average(values[rows], weights=weights[rows])
        assert weighted[r] == pytest.approx(expected, rel=1e-12), r


def test_bootstrap_mean_hand_computed_and_empty_replicate() -> None:
    values = np.array([1.0, 3.0, np.nan, 10.0])
    row_user = np.array([0, 0, 1, 2])
    weights = np.array([1.0, 3.0, 5.0, 2.0])
    counts = np.array([[1, 1, 1], [2, 0, 1], [0, 3, 0]], dtype=np.float32)
    # r0: rows 1, 3, 10 (NaN row dropped)     -> 14 / 3
    # r1: rows 1, 3 twice, 10 once            -> (2 + 6 + 10) / 5 = 3.6
    # r2: only user 1, whose row is NaN       -> NaN
    result = bootstrap_mean(values, row_user, counts)
    np.testing.assert_allclose(result[:2], [14 / 3, 3.6], atol=1e-12)
    assert np.isnan(result[2])
    # weighted r0: (1*1 + 3*3 + 2*10) / (1 + 3 + 2) = 30 / 6 = 5
    # weighted r1: 2*(1 + 9) + 20 = 40 over 2*4 + 2 = 10 -> 4
    weighted = bootstrap_mean(values, row_user, counts, weights=weights)
    np.testing.assert_allclose(weighted[:2], [5.0, 4.0], atol=1e-12)


def test_bootstrap_rmse_matches_brute_force_expansion() -> None:
    rng = np.random.default_rng(4)
    n_users, n_rows = 20, 250
    row_user = rng.integers(0, n_users, size=n_rows)
    y = rng.integers(1, 6, size=n_rows).astype(float)
    pred = y + rng.normal(scale=0.8, size=n_rows)
    y[:10] = np.nan  # unknown targets are left out
    counts = resample_counts(n_users, 5, seed=4)
    result = bootstrap_rmse(y, pred, row_user, counts)
    for r in range(len(counts)):
        rows = _expanded_rows(counts[r], row_user)
        rows = rows[~np.isnan(y[rows])]
        assert result[r] == pytest.approx(rmse(y[rows], pred[rows]), rel=1e-12), r


def test_bootstrap_rejects_bad_input() -> None:
    counts = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="row_user"):
        bootstrap_mean(np.ones(2), np.array([0, 3]), counts)
    with pytest.raises(ValueError, match="row_user"):
        bootstrap_mean(np.ones(2), np.array([0.0, 1.0]), counts)
    with pytest.raises(ValueError, match="counts"):
        bootstrap_mean(np.ones(2), np.array([0, 1]), np.ones(3))
    with pytest.raises(ValueError, match="weights"):
        bootstrap_mean(np.ones(2), np.array([0, 1]), counts, weights=np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="binary"):
        bootstrap_auc(np.array([0, 2]), np.array([0.1, 0.2]), np.array([0, 1]), counts)


# --------------------------------------------------------------------------- intervals


def test_percentile_interval_covers_the_mean_with_expected_width() -> None:
    rng = np.random.default_rng(0)
    n_users = 2000
    values = rng.normal(size=n_users)  # one row per user
    counts = resample_counts(n_users, 1000, seed=1)
    reps = bootstrap_mean(values, np.arange(n_users), counts)
    low, high = percentile_interval(reps, level=0.95)
    sample_mean = values.mean()
    assert low < sample_mean < high
    assert abs((low + high) / 2 - sample_mean) < 0.2 * (high - low)
    expected_width = 2 * 1.96 / math.sqrt(n_users)  # 0.0877
    assert (high - low) == pytest.approx(expected_width, rel=0.25)
    # A lower level gives a narrower interval nested inside.
    low50, high50 = percentile_interval(reps, level=0.5)
    assert low < low50 < high50 < high


def test_percentile_interval_hand_computed_and_nan() -> None:
    reps = np.array([np.nan, *np.arange(101.0)])  # 0..100 plus a NaN replicate
    assert percentile_interval(reps, level=0.9) == pytest.approx((5.0, 95.0))
    low, high = percentile_interval(np.full(4, np.nan))
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="level"):
        percentile_interval(reps, level=95)


def test_paired_difference_interval_is_tight_when_unpaired_is_wide() -> None:
    rng = np.random.default_rng(2)
    n_users = 500
    row_user = np.repeat(np.arange(n_users), 3)  # three rows per user
    baseline = rng.normal(size=n_users)[row_user] + rng.normal(scale=0.3, size=len(row_user))
    model = baseline + 0.1
    counts = resample_counts(n_users, 400, seed=3)
    model_reps = bootstrap_mean(model, row_user, counts)
    baseline_reps = bootstrap_mean(baseline, row_user, counts)

    low, high = paired_difference_interval(model_reps, baseline_reps)
    assert low == pytest.approx(0.1, abs=1e-12) and high == pytest.approx(0.1, abs=1e-12)
    model_low, model_high = percentile_interval(model_reps)
    base_low, base_high = percentile_interval(baseline_reps)
    assert model_high - model_low > 0.1 and base_high - base_low > 0.1  # ~0.18 each
    # The intervals of the two systems overlap although the paired one excludes 0.
    assert model_low < base_high
    with pytest.raises(ValueError, match="same length"):
        paired_difference_interval(model_reps, baseline_reps[:-1])
