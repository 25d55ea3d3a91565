"""Metrics against hand-computed values and plain-Python / sklearn references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recsys_mtl.evaluation.metrics import (
    auc,
    gauc,
    log_loss,
    mae,
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
    ndcg3 = (g / (1 + g) + 1 + 1 + 1.5 / (1 + g)) / 4
    expected = {
        "recall@1": 0.425,
        "ndcg@1": 0.75,
        "hitrate@1": 0.75,
        "recall@3": 0.775,
        "ndcg@3": ndcg3,
        "hitrate@3": 1.0,
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


def test_ranking_repeated_items_count_once() -> None:
    # u0 lists item 2 twice; relevant {2, 5} also lists 2 twice.
    indptr, items = _csr([[2, 5, 2]])
    result = ranking_metrics(np.array([[2, 2, 5]]), indptr, items, ks=[2, 3])
    # n_rel = 2; top-2 hits [1, 0] -> recall 1/2; top-3 hits [1, 0, 1] -> recall 1
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["recall@3"] == pytest.approx(1.0)
    g = 1 / math.log2(3)
    assert result["ndcg@3"] == pytest.approx(1.5 / (1 + g))


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
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hitrate")}
    n_users = 0
    for row, rel in zip(top_items.tolist(), relevant, strict=True):
        rel_set = set(rel)
        if not rel_set:
            continue
        n_users += 1
        for k in ks:
            seen: set[int] = set()
            hits, dcg = 0, 0.0
            for i, item in enumerate(row[:k]):
                if item in rel_set and item not in seen:
                    hits += 1
                    dcg += 1 / math.log2(i + 2)
                seen.add(item)
            idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel_set))))
            sums[f"recall@{k}"] += hits / len(rel_set)
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hitrate@{k}"] += float(hits > 0)
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
