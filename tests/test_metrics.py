"""Metrics against hand-computed values and plain-Python / sklearn references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recsys_mtl.evaluation.metrics import (
    auc,
    calibration_curve,
    calibration_ratio,
    catalogue_coverage,
    expected_calibration_error,
    gauc,
    log_loss,
    mae,
    mean_popularity,
    per_user_auc,
    per_user_ranking,
    ranking_metrics,
    rmse,
)

# --------------------------------------------------------------------------- AUC


def test_auc_with_ties_hand_computed() -> None:
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.9, 0.3, 0.1, 0.5])
    # positives {0.9, 0.3, 0.5}, negatives {0.9, 0.1}; 3 * 2 = 6 pairs:
    #   0.9 vs 0.9 -> 1/2 (tie),  0.9 vs 0.1 -> 1
    #   0.3 vs 0.9 -> 0,          0.3 vs 0.1 -> 1
    #   0.5 vs 0.9 -> 0,          0.5 vs 0.1 -> 1
    # AUC = 3.5 / 6 = 7/12.
    # Rank check: sorted 0.1(1) 0.3(2) 0.5(3) 0.9,0.9(4.5 each); positive ranks
    # 4.5 + 2 + 3 = 9.5; (9.5 - 3*4/2) / 6 = 3.5 / 6.
    assert auc(labels, scores) == pytest.approx(7 / 12, abs=1e-12)
    assert auc(labels.astype(bool), scores) == pytest.approx(7 / 12, abs=1e-12)


def test_auc_perfect_inverted_and_all_tied() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(labels, np.full(4, 0.5)) == 0.5


def test_auc_single_class_is_nan() -> None:
    assert math.isnan(auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(auc(np.array([0, 0]), np.array([0.1, 0.2])))
    assert math.isnan(auc(np.array([], dtype=int), np.array([])))


def test_auc_invariant_under_monotone_transform() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=500)
    scores = np.round(rng.normal(size=500), 1)  # rounding plants many ties
    base = auc(labels, scores)
    assert 0.0 < base < 1.0
    assert auc(labels, np.exp(2.0 * scores) + 3.0) == pytest.approx(base, abs=1e-12)
    assert auc(labels, 1.0 / (1.0 + np.exp(-scores))) == pytest.approx(base, abs=1e-12)
    # A decreasing transform mirrors it.
    assert auc(labels, -scores) == pytest.approx(1.0 - base, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    labels = rng.integers(0, 2, size=n)
    scores = labels * 0.3 + rng.normal(size=n)
    if seed == 2:
        scores = np.round(scores, 1)  # heavy ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="binary"):
        auc(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="same length"):
        auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))


# --------------------------------------------------------------------------- GAUC


def test_gauc_hand_computed_excludes_single_class_user() -> None:
    # Rows of three users, interleaved on purpose; scores overlap across users so
    # a rank computed over all rows instead of within each user would be wrong.
    users = np.array([20, 10, 30, 20, 10, 20, 30, 10, 20])
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0, 0])
    scores = np.array([0.2, 0.8, 0.1, 0.6, 0.4, 0.1, 0.9, 0.8, 0.3])
    # user 10: labels [1, 0, 0], scores [0.8, 0.4, 0.8]
    #   pos 0.8 vs neg 0.4 -> 1, vs neg 0.8 -> 1/2 (tie)  => AUC = 1.5 / 2 = 0.75, n = 3
    # user 20: labels [0, 1, 1, 0], scores [0.2, 0.6, 0.1, 0.3]
    #   pos 0.6 vs 0.2 -> 1, vs 0.3 -> 1; pos 0.1 vs 0.2 -> 0, vs 0.3 -> 0
    #   => AUC = 2 / 4 = 0.5, n = 4
    # user 30: only positives -> excluded (its 2 rows do not count in the weights)
    # GAUC = (3 * 0.75 + 4 * 0.5) / (3 + 4) = 4.25 / 7 = 17/28
    assert gauc(users, labels, scores) == pytest.approx(17 / 28, abs=1e-12)
    # String user ids work the same way.
    assert gauc(users.astype(str), labels, scores) == pytest.approx(17 / 28, abs=1e-12)


def test_gauc_nan_when_no_user_qualifies() -> None:
    users = np.array([1, 1, 2, 2])
    labels = np.array([1, 1, 0, 0])
    assert math.isnan(gauc(users, labels, np.array([0.1, 0.2, 0.3, 0.4])))
    assert math.isnan(gauc(np.array([], dtype=int), np.array([], dtype=int), np.array([])))


def test_gauc_single_user_equals_auc() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(size=300), 1)
    assert gauc(np.zeros(300, dtype=int), labels, scores) == pytest.approx(
        auc(labels, scores), abs=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_per_user_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, 200, size=n)
    labels = rng.integers(0, 2, size=n)
    scores = np.round(labels * 0.5 + rng.normal(size=n), 1)  # ties within users

    total, weight = 0.0, 0
    for user in np.unique(users):
        rows = users == user
        if len(np.unique(labels[rows])) == 2:
            total += rows.sum() * roc_auc_score(labels[rows], scores[rows])
            weight += rows.sum()
    assert gauc(users, labels, scores) == pytest.approx(total / weight, abs=1e-12)


def test_per_user_auc_hand_computed() -> None:
    # Same rows as test_gauc_hand_computed_excludes_single_class_user; np.unique order is
    # [10, 20, 30] and user 30 (positives only) is left out.
    users = np.array([20, 10, 30, 20, 10, 20, 30, 10, 20])
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0, 0])
    scores = np.array([0.2, 0.8, 0.1, 0.6, 0.4, 0.1, 0.9, 0.8, 0.3])
    group, user_auc, n_rows = per_user_auc(users, labels, scores)
    np.testing.assert_array_equal(group, [0, 1])
    np.testing.assert_allclose(user_auc, [0.75, 0.5], atol=1e-12)
    np.testing.assert_array_equal(n_rows, [3, 4])

    empty = per_user_auc(np.array([1, 1]), np.array([1, 1]), np.array([0.1, 0.2]))
    assert all(a.size == 0 for a in empty)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_user_auc_matches_per_user_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, 200, size=n) * 7 - 50  # non-contiguous ids
    labels = rng.integers(0, 2, size=n)
    scores = np.round(labels * 0.5 + rng.normal(size=n), 1)  # ties within users

    expected_group, expected_auc, expected_rows = [], [], []
    for g, user in enumerate(np.unique(users)):
        rows = users == user
        if len(np.unique(labels[rows])) == 2:
            expected_group.append(g)
            expected_auc.append(roc_auc_score(labels[rows], scores[rows]))
            expected_rows.append(int(rows.sum()))

    group, user_auc, n_rows = per_user_auc(users, labels, scores)
    np.testing.assert_array_equal(group, expected_group)
    np.testing.assert_allclose(user_auc, expected_auc, atol=1e-12)
    np.testing.assert_array_equal(n_rows, expected_rows)
    assert gauc(users, labels, scores) == pytest.approx(
        np.average(expected_auc, weights=expected_rows), abs=1e-12
    )


# --------------------------------------------------------------------------- log loss, RMSE, MAE


def test_log_loss_hand_computed() -> None:
    labels = np.array([1, 0, 1])
    probs = np.array([0.8, 0.4, 1.0])
    # -(ln 0.8 + ln(1 - 0.4) + ln(1 - 1e-7)) / 3; p = 1.0 is clipped to 1 - 1e-7
    # = (0.2231435513 + 0.5108256238 + 1.00000005e-7) / 3 = 0.2446564251
    expected = -(math.log(0.8) + math.log(0.6) + math.log(1 - 1e-7)) / 3
    assert log_loss(labels, probs) == pytest.approx(expected, rel=1e-12)
    assert log_loss(labels, probs) == pytest.approx(0.2446564251, abs=1e-9)


def test_log_loss_clips_certain_mistakes() -> None:
    # A positive predicted with p = 0 costs -ln(eps) instead of infinity.
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    assert log_loss(np.array([0]), np.array([1.0]), eps=1e-3) == pytest.approx(-math.log(1e-3))


def test_rmse_and_mae_hand_computed() -> None:
    y = np.array([3.0, 5.0, 2.5, 0.0])
    pred = np.array([2.5, 5.0, 4.0, 2.0])
    # errors pred - y = [-0.5, 0, 1.5, 2]
    # RMSE = sqrt((0.25 + 0 + 2.25 + 4) / 4) = sqrt(1.625) = 1.2747548784
    # MAE  = (0.5 + 0 + 1.5 + 2) / 4 = 1.0
    assert rmse(y, pred) == pytest.approx(math.sqrt(1.625), abs=1e-12)
    assert rmse(y, pred) == pytest.approx(1.2747548784, abs=1e-9)
    assert mae(y, pred) == pytest.approx(1.0, abs=1e-12)
    assert rmse(y, y) == 0.0
    assert math.isnan(mae(np.array([]), np.array([])))


# --------------------------------------------------------------------------- ranking


def _csr(relevant: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate(([0], np.cumsum([len(r) for r in relevant]))).astype(np.int64)
    items = np.array([i for r in relevant for i in r], dtype=np.int64)
    return indptr, items


def test_ranking_metrics_hand_computed() -> None:
    top_items = np.array(
        [
            [5, 2, 7],  # u0: relevant {2, 9}           hits [0, 1, 0]
            [1, 2, 3],  # u1: no relevant item           ignored
            [9, 0, 4],  # u2: relevant {0, 4, 9, 8, 6}   hits [1, 1, 1], n_rel = 5 > k
            [4, -1, -1],  # u3: relevant {4}, padded     hits [1, 0, 0]
            [3, 8, 1],  # u4: relevant {1, 3}           hits [1, 0, 1]
        ]
    )
    # Item 9 is the largest id, so a (user, item) key for u3's -1 padding would alias
    # u2's relevant item 9 if padding were not masked.
    indptr, items = _csr([[2, 9], [], [0, 4, 9, 8, 6], [4], [1, 3]])
    g = 1 / math.log2(3)  # discount of position 1 (0-based); position 0 -> 1, position 2 -> 1/2
    # k = 1:
    #   recall:  u0 0/2, u2 1/5, u3 1/1, u4 1/2           -> (0 + 0.2 + 1 + 0.5) / 4 = 0.425
    #   hitrate: 0, 1, 1, 1                                -> 0.75
    #   ndcg (IDCG@1 = 1 for all): 0, 1, 1, 1              -> 0.75
    # k = 3:
    #   recall:  u0 1/2, u2 3/5, u3 1/1, u4 2/2           -> (0.5 + 0.6 + 1 + 1) / 4 = 0.775
    #   hitrate: 1, 1, 1, 1                                -> 1
    #   ndcg:    u0 DCG g       / IDCG (1 + g)             (min(3, 2) = 2 ideal hits)
    #            u2 DCG 1+g+1/2 / IDCG (1 + g + 1/2) = 1   (min(3, 5) = 3)
    #            u3 DCG 1       / IDCG 1             = 1   (min(3, 1) = 1)
    #            u4 DCG 1 + 1/2 / IDCG (1 + g)             (min(3, 2) = 2)
    # mean = (0.3868528 + 1 + 1 + 0.9197208) / 4 = 0.8266434
    #   precision@3 (hits / 3, padding a miss): 1/3, 3/3, 1/3, 2/3 -> (7/3) / 4 = 7/12
    #   mrr@3 (first hit at 1-based position):  1/2, 1, 1, 1      -> 3.5 / 4 = 0.875
    # k = 1: precision@1 = hitrate@1 = 0.75; mrr@1 = 0, 1, 1, 1 -> 0.75 (u0's hit at
    #   position 2 lies beyond the cut-off).
    ndcg3 = (g / (1 + g) + 1 + 1 + 1.5 / (1 + g)) / 4
    expected = {
        "recall@1": 0.425,
        "ndcg@1": 0.75,
        "hitrate@1": 0.75,
        "precision@1": 0.75,
        "mrr@1": 0.75,
        "recall@3": 0.775,
        "ndcg@3": ndcg3,
        "hitrate@3": 1.0,
        "precision@3": 7 / 12,
        "mrr@3": 0.875,
    }
    result = ranking_metrics(top_items, indptr, items, ks=[1, 3])
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert result["ndcg@3"] == pytest.approx(0.8266434, abs=1e-7)

    per_user = per_user_ranking(top_items, indptr, items, ks=[1, 3])
    assert per_user["recall@3"].shape == (5,)
    assert np.isnan(per_user["recall@3"][1]) and np.isnan(per_user["ndcg@1"][1])
    np.testing.assert_allclose(per_user["recall@3"][[0, 2, 3, 4]], [0.5, 0.6, 1.0, 1.0])
    np.testing.assert_allclose(
        per_user["ndcg@3"][[0, 2, 3, 4]], [g / (1 + g), 1.0, 1.0, 1.5 / (1 + g)]
    )
    assert np.isnan(per_user["precision@3"][1]) and np.isnan(per_user["mrr@1"][1])
    np.testing.assert_allclose(per_user["precision@3"][[0, 2, 3, 4]], [1 / 3, 1.0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(per_user["mrr@1"][[0, 2, 3, 4]], [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(per_user["mrr@3"][[0, 2, 3, 4]], [0.5, 1.0, 1.0, 1.0])


def test_precision_and_mrr_tiny_case() -> None:
    top_items = np.array([[3, 1, 2], [0, 4, 1], [2, 0, 1]])
    # u0: relevant {2}     hits [0, 0, 1] -> precision@2 0,   @3 1/3; mrr@2 0,   @3 1/3
    # u1: relevant {4, 1}  hits [0, 1, 1] -> precision@2 1/2, @3 2/3; mrr@2 1/2, @3 1/2
    # u2: relevant {7}     hits [0, 0, 0] -> precision 0;             mrr 0
    indptr, items = _csr([[2], [4, 1], [7]])
    per_user = per_user_ranking(top_items, indptr, items, ks=[2, 3])
    np.testing.assert_allclose(per_user["precision@2"], [0.0, 0.5, 0.0])
    np.testing.assert_allclose(per_user["precision@3"], [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(per_user["mrr@2"], [0.0, 0.5, 0.0])
    np.testing.assert_allclose(per_user["mrr@3"], [1 / 3, 0.5, 0.0])
    result = ranking_metrics(top_items, indptr, items, ks=[3])
    assert result["precision@3"] == pytest.approx(1 / 3)
    assert result["mrr@3"] == pytest.approx(5 / 18)


def test_ranking_repeated_items_count_once() -> None:
    # u0 lists item 2 twice; relevant {2, 5} also lists 2 twice.
    indptr, items = _csr([[2, 5, 2]])
    result = ranking_metrics(np.array([[2, 2, 5]]), indptr, items, ks=[2, 3])
    # n_rel = 2; top-2 hits [1, 0] -> recall 1/2; top-3 hits [1, 0, 1] -> recall 1
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["recall@3"] == pytest.approx(1.0)
    g = 1 / math.log2(3)
    assert result["ndcg@3"] == pytest.approx(1.5 / (1 + g))
    # The repeat at position 1 is a miss: precision@2 = 1/2, precision@3 = 2/3; mrr 1.
    assert result["precision@2"] == pytest.approx(0.5)
    assert result["precision@3"] == pytest.approx(2 / 3)
    assert result["mrr@3"] == pytest.approx(1.0)


def test_ranking_all_users_without_relevant_items_is_nan() -> None:
    indptr, items = _csr([[], []])
    result = ranking_metrics(np.array([[0, 1], [1, 0]]), indptr, items, ks=[2])
    assert all(math.isnan(v) for v in result.values())


def test_ranking_rejects_bad_input() -> None:
    indptr, items = _csr([[1], [2]])
    top = np.array([[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="cut-off"):
        ranking_metrics(top, indptr, items, ks=[3])
    with pytest.raises(ValueError, match="cut-off"):
        ranking_metrics(top, indptr, items, ks=[0])
    with pytest.raises(ValueError, match="indptr"):
        ranking_metrics(top, indptr[:-1], items, ks=[1])
    with pytest.raises(ValueError, match="integer"):
        ranking_metrics(top.astype(float), indptr, items, ks=[1])


def _reference_ranking(
    top_items: np.ndarray, relevant: list[list[int]], ks: list[int]
) -> dict[str, float]:
    """Plain-Python reference: one loop per user, one per position."""
    names = ("recall", "ndcg", "hitrate", "precision", "mrr")
    sums = {f"{m}@{k}": 0.0 for k in ks for m in names}
    n_users = 0
    for row, rel in zip(top_items.tolist(), relevant, strict=True):
        rel_set = set(rel)
        if not rel_set:
            continue
        n_users += 1
        for k in ks:
            seen: set[int] = set()
            hits, dcg, reciprocal_rank = 0, 0.0, 0.0
            for i, item in enumerate(row[:k]):
                if item in rel_set and item not in seen:
                    hits += 1
                    dcg += 1 / math.log2(i + 2)
                    if reciprocal_rank == 0.0:
                        reciprocal_rank = 1 / (i + 1)
                seen.add(item)
            idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel_set))))
            sums[f"recall@{k}"] += hits / len(rel_set)
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hitrate@{k}"] += float(hits > 0)
            sums[f"precision@{k}"] += hits / k
            sums[f"mrr@{k}"] += reciprocal_rank
    return {name: total / n_users for name, total in sums.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_matches_plain_python_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, k_max, ks = 60, 25, 10, [1, 3, 5, 10]
    top_items = np.stack([rng.permutation(n_items)[:k_max] for _ in range(n_users)])
    n_candidates = rng.integers(0, k_max + 1, size=n_users)
    top_items[np.arange(k_max)[None, :] >= n_candidates[:, None]] = -1  # ragged padding
    relevant = [
        rng.choice(n_items, size=rng.integers(0, 12), replace=False).tolist()
        for _ in range(n_users)
    ]
    indptr, items = _csr(relevant)

    result = ranking_metrics(top_items, indptr, items, ks)
    expected = _reference_ranking(top_items, relevant, ks)
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name


def test_ranking_reference_with_repeated_items() -> None:
    # Lists with repeats, so a repeat that is counted twice (in precision or mrr) fails.
    rng = np.random.default_rng(5)
    n_users, n_items, k_max, ks = 40, 8, 6, [1, 2, 6]
    top_items = rng.integers(-1, n_items, size=(n_users, k_max))
    relevant = [
        rng.choice(n_items, size=rng.integers(0, 4), replace=False).tolist() for _ in range(n_users)
    ]
    indptr, items = _csr(relevant)
    result = ranking_metrics(top_items, indptr, items, ks)
    expected = _reference_ranking(top_items, relevant, ks)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name


# --------------------------------------------------------------------------- calibration


def test_calibration_hand_computed() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array([0.1, 0.3, 0.2, 0.9, 1.0, 0.8])
    # bins=4 on [0, 1): [0, .25) [.25, .5) [.5, .75) [.75, 1], p = 1.0 in the last bin.
    #   bin 0: p 0.1, 0.2 labels 0, 0        -> mean 0.15, observed 0,   count 2
    #   bin 1: p 0.3       label 1           -> mean 0.3,  observed 1,   count 1
    #   bin 2: empty                         -> NaN, NaN, 0
    #   bin 3: p 0.9, 1.0, 0.8 labels 1,1,0  -> mean 0.9,  observed 2/3, count 3
    mean_pred, observed, count = calibration_curve(labels, probs, bins=4)
    np.testing.assert_allclose(mean_pred, [0.15, 0.3, np.nan, 0.9], atol=1e-12)
    np.testing.assert_allclose(observed, [0.0, 1.0, np.nan, 2 / 3], atol=1e-12)
    np.testing.assert_array_equal(count, [2, 1, 0, 3])
    # ECE = 2/6 * 0.15 + 1/6 * 0.7 + 3/6 * |0.9 - 2/3| = 0.05 + 0.11667 + 0.11667 = 0.28333
    ece = 2 / 6 * 0.15 + 1 / 6 * 0.7 + 3 / 6 * (0.9 - 2 / 3)
    assert expected_calibration_error(labels, probs, bins=4) == pytest.approx(ece, abs=1e-12)
    assert expected_calibration_error(labels, probs, bins=4) == pytest.approx(0.2833333, abs=1e-6)
    # ratio = mean(probs) / mean(labels) = (3.3 / 6) / (3 / 6) = 1.1
    assert calibration_ratio(labels, probs) == pytest.approx(1.1, abs=1e-12)


def test_calibration_default_bins_and_edges() -> None:
    # 10 bins: 0.0 -> bin 0, 0.55 -> bin 5, 0.99 and 1.0 -> bin 9.
    mean_pred, observed, count = calibration_curve(
        np.array([0, 1, 1, 0]), np.array([0.0, 0.55, 0.99, 1.0])
    )
    assert mean_pred.shape == observed.shape == count.shape == (10,)
    np.testing.assert_array_equal(count, [1, 0, 0, 0, 0, 1, 0, 0, 0, 2])
    assert mean_pred[9] == pytest.approx(0.995) and observed[9] == pytest.approx(0.5)
    assert np.isnan(mean_pred[1]) and np.isnan(observed[1])


def test_calibration_perfectly_calibrated_has_zero_ece() -> None:
    # Each bin's rows all predict p and a fraction p of them is positive.
    labels, probs = [], []
    for p, n in [(0.05, 20), (0.25, 8), (0.5, 10), (0.75, 4), (1.0, 3)]:
        n_pos = round(p * n)
        labels += [1] * n_pos + [0] * (n - n_pos)
        probs += [p] * n
    labels_a, probs_a = np.array(labels), np.array(probs)
    assert expected_calibration_error(labels_a, probs_a) == pytest.approx(0.0, abs=1e-12)
    assert calibration_ratio(labels_a, probs_a) == pytest.approx(1.0, abs=1e-12)
    # Halving every prediction: ECE = mean |p/2 - p| over rows, ratio 0.5.
    assert expected_calibration_error(labels_a, probs_a / 2) == pytest.approx(
        np.mean(probs_a / 2), abs=1e-12
    )
    assert calibration_ratio(labels_a, probs_a / 2) == pytest.approx(0.5, abs=1e-12)


def test_calibration_empty_and_degenerate() -> None:
    empty_i, empty_f = np.array([], dtype=int), np.array([])
    assert math.isnan(expected_calibration_error(empty_i, empty_f))
    assert math.isnan(calibration_ratio(empty_i, empty_f))
    assert math.isnan(calibration_ratio(np.array([0, 0]), np.array([0.2, 0.4])))
    _, _, count = calibration_curve(empty_i, empty_f, bins=3)
    np.testing.assert_array_equal(count, [0, 0, 0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_curve(np.array([0, 1]), np.array([0.2, 1.5]))
    with pytest.raises(ValueError, match="bins"):
        calibration_curve(np.array([0, 1]), np.array([0.2, 0.5]), bins=0)


# --------------------------------------------------------------------------- beyond accuracy


def test_coverage_and_mean_popularity_hand_computed() -> None:
    top_items = np.array(
        [
            [0, 3, -1],
            [3, 1, 4],
            [-1, -1, -1],
            [5, 3, 0],
        ]
    )
    popularity = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
    # k = 1: valid items 0, 3, 5        -> 3 distinct / 7; popularity (10 + 40 + 60) / 3
    # k = 2: valid 0,3, 3,1, 5,3         -> {0, 1, 3, 5} 4 / 7; (10+40+40+20+60+40) / 6 = 35
    # k = 3: adds 4 and 0                -> {0, 1, 3, 4, 5} 5 / 7; (210 + 50 + 10) / 8
    assert catalogue_coverage(top_items, 7, 1) == pytest.approx(3 / 7)
    assert catalogue_coverage(top_items, 7, 2) == pytest.approx(4 / 7)
    assert catalogue_coverage(top_items, 7, 3) == pytest.approx(5 / 7)
    assert mean_popularity(top_items, popularity, 1) == pytest.approx(110 / 3)
    assert mean_popularity(top_items, popularity, 2) == pytest.approx(35.0)
    assert mean_popularity(top_items, popularity, 3) == pytest.approx(270 / 8)

    all_padding = np.full((2, 2), -1)
    assert catalogue_coverage(all_padding, 7, 2) == 0.0
    assert math.isnan(mean_popularity(all_padding, popularity, 2))


def test_coverage_and_popularity_reject_bad_input() -> None:
    top = np.array([[0, 1], [2, -1]])
    with pytest.raises(ValueError, match="cut-off"):
        catalogue_coverage(top, 5, 3)
    with pytest.raises(ValueError, match="n_items"):
        catalogue_coverage(top, 2, 2)
    with pytest.raises(ValueError, match="popularity"):
        mean_popularity(top, np.array([1.0, 2.0]), 2)
    with pytest.raises(ValueError, match="integer"):
        mean_popularity(top.astype(float), np.ones(3), 1)
