"""Split kinds (per-user temporal by fraction or last N, one cut in time, random) and
popularity-weighted negative sampling, checked against hand-written answers."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_mtl.features.negatives import negatives_frame, popularity_weights, sample_negatives
from recsys_mtl.features.split import (
    SPLIT_KINDS,
    TEST,
    TRAIN,
    VALIDATION,
    assign_split,
    temporal_split,
)

T, V, R = TEST, VALIDATION, TRAIN

# chi-square critical values at p = 0.999 (df -> value), so a correct sampler fails 1 in 1000
CHI2_999 = {3: 16.27, 5: 20.52, 7: 24.32}


def _frame(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    """(user_id, timestamp, expected split) rows -> frame with an input-order `row` column."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            "row": list(range(len(rows))),
        }
    )


def _check(out: pl.DataFrame, rows: list[tuple[int, int, int]]) -> None:
    assert out["row"].to_list() == list(range(len(rows)))  # input order kept
    assert out["split"].dtype == pl.Int8
    assert out["split"].to_list() == [r[2] for r in rows]


# ---------------------------------------------------------------------------- per-user temporal


def test_per_user_fraction_hand_made() -> None:
    rows = [
        # validation 0.25, test 0.25
        # user 1: 8 events -> 2 test (ts 70, 80), 2 validation (ts 50, 60), 4 train
        (1, 80, T),
        (1, 10, R),
        (1, 50, V),
        (2, 5, R),  # user 2: 3 events -> floor(0.75) = 0 held out
        (1, 30, R),
        (1, 70, T),
        (2, 1, R),
        (1, 20, R),
        (1, 60, V),
        (2, 3, R),
        (1, 40, R),
        # user 3: 4 events -> 1 test, 1 validation; the tie at ts 7 keeps input order
        (3, 7, V),
        (3, 1, R),
        (3, 2, R),
        (3, 7, T),
    ]
    out = assign_split(
        _frame(rows), "per_user_temporal", validation_fraction=0.25, test_fraction=0.25
    )
    _check(out, rows)
    assert_frame_equal(temporal_split(_frame(rows), 0.25, 0.25), out)


def test_per_user_last_n_hand_made_including_users_with_too_few_events() -> None:
    rows = [
        # test_last_n 2, validation_last_n 1
        # user 1: 5 events -> 2 test, 1 validation, 2 train
        (1, 5, T),
        (1, 1, R),
        (1, 4, T),
        (1, 3, V),
        (1, 2, R),
        # user 2: 3 events -> at most 2 leave train, test first: 2 test, 0 validation
        (2, 30, T),
        (2, 10, R),
        (2, 20, T),
        # user 3: 2 events -> 1 test, 1 train
        (3, 9, R),
        (3, 10, T),
        # user 4: a single event stays in train
        (4, 100, R),
        # user 5: 4 events, ties at ts 2: the later input row counts as the later event
        (5, 2, V),
        (5, 1, R),
        (5, 2, T),
        (5, 3, T),
    ]
    out = assign_split(
        _frame(rows),
        "per_user_temporal",
        validation_fraction=0.0,
        test_fraction=0.0,
        validation_last_n=1,
        test_last_n=2,
    )
    _check(out, rows)


def test_per_user_last_n_test_with_validation_fraction() -> None:
    rows = [
        # test_last_n 1, validation by fraction 0.5
        # user 1: 4 events -> 1 test, floor(4 * 0.5) = 2 validation, 1 train
        (1, 4, T),
        (1, 3, V),
        (1, 2, V),
        (1, 1, R),
        # user 2: 2 events -> 1 test; floor(2 * 0.5) = 1 validation would leave no train: 0
        (2, 1, R),
        (2, 2, T),
    ]
    out = assign_split(
        _frame(rows),
        "per_user_temporal",
        validation_fraction=0.5,
        test_fraction=0.0,
        test_last_n=1,
    )
    _check(out, rows)


def test_per_user_last_n_on_random_data_counts() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 12, 300)
    frame = pl.DataFrame(
        {
            "user_id": rng.permutation(np.repeat(np.arange(300), counts)),
            "timestamp": rng.integers(0, 50, counts.sum()),
        }
    )
    out = assign_split(
        frame,
        "per_user_temporal",
        validation_fraction=0.1,
        test_fraction=0.2,
        validation_last_n=2,
        test_last_n=3,
    )
    per_user = out.group_by("user_id").agg(
        pl.len().alias("n"),
        (pl.col("split") == TEST).sum().alias("test"),
        (pl.col("split") == VALIDATION).sum().alias("val"),
        pl.col("timestamp").filter(pl.col("split") == TRAIN).max().alias("last_train"),
        pl.col("timestamp").filter(pl.col("split") != TRAIN).min().alias("first_held"),
    )
    n = per_user["n"].to_numpy()
    expected_test = np.minimum(3, n - 1)
    assert (per_user["test"].to_numpy() == expected_test).all()
    assert (per_user["val"].to_numpy() == np.minimum(2, n - 1 - expected_test)).all()
    held = per_user.filter(pl.col("first_held").is_not_null())
    assert (held["last_train"] <= held["first_held"]).all()


# ---------------------------------------------------------------------------- global time


def test_global_time_hand_made_with_ties_at_both_cuts() -> None:
    # sorted timestamps 1 2 3 4 6 6 6 8 8 9 (N = 10); test 0.2, validation 0.2:
    # test cut = sorted[10 - 2] = 8, so both 8s and the 9 are test (3 rows, the tie moves in);
    # validation cut = sorted[10 - 4] = 6, so all three 6s are validation
    rows = [
        (1, 6, V),
        (2, 1, R),
        (1, 8, T),
        (3, 3, R),
        (2, 9, T),
        (3, 6, V),
        (1, 2, R),
        (2, 4, R),
        (3, 8, T),
        (2, 6, V),
    ]
    out = assign_split(_frame(rows), "global_time", validation_fraction=0.2, test_fraction=0.2)
    _check(out, rows)

    # the same with datetimes
    start = datetime(2024, 1, 1)
    dated = _frame(rows).with_columns(
        pl.Series([start + timedelta(days=r[1]) for r in rows]).alias("timestamp")
    )
    out = assign_split(dated, "global_time", validation_fraction=0.2, test_fraction=0.2)
    _check(out, rows)


def test_global_time_without_ties_and_without_validation() -> None:
    rows = [(u % 3, ts, T if ts >= 7 else R) for u, ts in enumerate([4, 9, 0, 7, 2, 8, 1, 5, 3, 6])]
    out = assign_split(_frame(rows), "global_time", validation_fraction=0.0, test_fraction=0.3)
    _check(out, rows)
    out = assign_split(_frame(rows), "global_time", validation_fraction=0.2, test_fraction=0.3)
    assert out["split"].to_list() == [
        T if ts >= 7 else V if ts >= 5 else R for ts in _frame(rows)["timestamp"]
    ]


# ---------------------------------------------------------------------------- random


def test_random_split_fractions_and_reproducibility() -> None:
    rows = 100_000
    frame = pl.DataFrame({"user_id": np.arange(rows) % 97, "timestamp": np.arange(rows)})
    out = assign_split(frame, "random", validation_fraction=0.1, test_fraction=0.2, seed=7)
    codes = out["split"].to_numpy()
    for code, p in [(TEST, 0.2), (VALIDATION, 0.1), (TRAIN, 0.7)]:
        std = np.sqrt(rows * p * (1 - p))  # binomial
        assert abs(np.count_nonzero(codes == code) - rows * p) < 5 * std, code
    again = assign_split(frame, "random", validation_fraction=0.1, test_fraction=0.2, seed=7)
    assert_frame_equal(out, again)
    other = assign_split(frame, "random", validation_fraction=0.1, test_fraction=0.2, seed=8)
    # independent splits agree on a row with probability 0.7^2 + 0.1^2 + 0.2^2 = 0.54
    agree = np.mean(other["split"].to_numpy() == codes)
    assert abs(agree - 0.54) < 0.01


# ---------------------------------------------------------------------------- split errors


def test_split_errors() -> None:
    frame = _frame([(1, 1, R), (1, 2, R)])
    with pytest.raises(ValueError, match="per_user_temporal, global_time, random"):
        assign_split(frame, "per_user", validation_fraction=0.1, test_fraction=0.2)
    assert SPLIT_KINDS == ("per_user_temporal", "global_time", "random")
    for kind in ("global_time", "random"):
        with pytest.raises(ValueError, match="per_user_temporal"):
            assign_split(frame, kind, validation_fraction=0.1, test_fraction=0.2, test_last_n=1)
    with pytest.raises(ValueError, match="test_fraction"):
        assign_split(frame, "random", validation_fraction=0.1, test_fraction=1.5)
    with pytest.raises(ValueError, match="nothing to train"):
        assign_split(frame, "global_time", validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        assign_split(
            frame, "per_user_temporal", validation_fraction=0, test_fraction=0, test_last_n=-1
        )


# ---------------------------------------------------------------------------- popularity weights


def test_popularity_weights_known_answer() -> None:
    # counts: item 2 -> 4, item 3 -> 1, item 5 -> 2; 0 and 1 are reserved, 4 and 6 unseen
    item_idx = np.array([2, 2, 5, 2, 3, 5, 2, 1, 0, 1])
    half = popularity_weights(item_idx, 7, 0.5)
    expected = np.array([0, 0, 2, 1, 0, np.sqrt(2), 0]) / (3 + np.sqrt(2))
    np.testing.assert_allclose(half, expected)
    np.testing.assert_allclose(
        popularity_weights(item_idx, 7, 1.0), [0, 0, 4 / 7, 1 / 7, 0, 2 / 7, 0]
    )
    np.testing.assert_allclose(
        popularity_weights(item_idx, 7, 0.0), [0, 0, 1 / 3, 1 / 3, 0, 1 / 3, 0]
    )
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        popularity_weights(np.array([2, 7]), 7, 1.0)
    with pytest.raises(ValueError, match="uniform"):
        popularity_weights(np.array([0, 1, 1]), 7, 1.0)


# ---------------------------------------------------------------------------- weighted sampling

N_ITEMS = 12
# items 2..9 seen with these counts; 10 and 11 never seen
COUNTS = {2: 64, 3: 32, 4: 16, 5: 8, 6: 4, 7: 2, 8: 1, 9: 1}


def _planted_positives() -> np.ndarray:
    return np.repeat(list(COUNTS), list(COUNTS.values()))


def _chi_square(items: np.ndarray, probabilities: np.ndarray) -> tuple[float, int]:
    """Pearson statistic of the draws `items` against `probabilities` (n_items,), and the
    degrees of freedom; the draws must fall on items of positive probability only."""
    support = probabilities > 0
    assert support[items].all()
    observed = np.bincount(items, minlength=probabilities.size)[support]
    expected = probabilities[support] / probabilities[support].sum() * items.size
    return float(((observed - expected) ** 2 / expected).sum()), int(support.sum()) - 1


def test_popularity_sampling_frequencies_match_count_to_the_exponent() -> None:
    weights = popularity_weights(_planted_positives(), N_ITEMS, 0.75)
    expected = np.zeros(N_ITEMS)
    expected[list(COUNTS)] = np.array(list(COUNTS.values()), dtype=float) ** 0.75
    np.testing.assert_allclose(weights, expected / expected.sum())

    draws = 200_000
    rows, items = sample_negatives(
        np.array([5]), N_ITEMS, draws, np.array([], int), np.array([], int),
        np.random.default_rng(0), weights,
    )  # fmt: skip
    assert rows.size == draws
    stat, df = _chi_square(items, weights)
    assert df == 7 and stat < CHI2_999[df]
    # a test that could fail: the same draws are far from uniform over the seen items
    uniform = np.where(weights > 0, 1.0, 0.0)
    assert _chi_square(items, uniform)[0] > 100 * CHI2_999[7]
    assert not np.isin(items, [0, 1, 10, 11]).any()  # reserved and never-seen items


def test_popularity_sampling_with_exclusions_follows_the_renormalised_weights() -> None:
    weights = popularity_weights(_planted_positives(), N_ITEMS, 1.0)
    # user 0 excludes the two most popular items 2 and 3; user 1 every seen item; user 2 none
    exclude_users = np.array([0, 0, *[1] * 8])
    exclude_items = np.array([2, 3, *range(2, 10)])
    users = np.array([0, 1, 2, 0])
    rows, items = sample_negatives(
        users, N_ITEMS, 20_000, exclude_users, exclude_items, np.random.default_rng(1), weights
    )
    assert (np.diff(rows) >= 0).all()  # in row order
    drawn_users = users[rows]
    assert not (drawn_users == 1).any()  # user 1 has nothing left that can be drawn
    assert not np.isin(items[drawn_users == 0], [2, 3]).any()
    assert not np.isin(items, [0, 1, 10, 11]).any()
    user_0 = weights.copy()
    user_0[[2, 3]] = 0
    stat, df = _chi_square(items[drawn_users == 0], user_0)
    assert df == 5 and stat < CHI2_999[df]
    stat, df = _chi_square(items[drawn_users == 2], weights)
    assert df == 7 and stat < CHI2_999[df]


def test_popularity_exponent_zero_is_uniform_over_seen_items() -> None:
    weights = popularity_weights(_planted_positives(), N_ITEMS, 0.0)
    _, items = sample_negatives(
        np.array([0]), N_ITEMS, 80_000, np.array([0]), np.array([9]),
        np.random.default_rng(2), weights,
    )  # fmt: skip
    uniform_but_9 = np.zeros(N_ITEMS)
    uniform_but_9[2:9] = 1.0
    stat, df = _chi_square(items, uniform_but_9)
    assert df == 6 and stat < 22.46  # chi2.ppf(0.999, 6)


def test_popularity_sampling_is_reproducible_and_checks_weights() -> None:
    weights = popularity_weights(_planted_positives(), N_ITEMS, 0.75)
    users = np.array([0, 1, 2])
    args = (users, N_ITEMS, 30, np.array([0, 1]), np.array([2, 2]))
    first = sample_negatives(*args, np.random.default_rng(3), weights)
    again = sample_negatives(*args, np.random.default_rng(3), weights)
    other = sample_negatives(*args, np.random.default_rng(4), weights)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    bad = weights.copy()
    bad[1] = 0.1
    with pytest.raises(ValueError, match="reserved"):
        sample_negatives(*args, np.random.default_rng(3), bad)
    with pytest.raises(ValueError, match="shape"):
        sample_negatives(*args, np.random.default_rng(3), weights[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        sample_negatives(*args, np.random.default_rng(3), -weights)


# ---------------------------------------------------------------------------- negatives_frame


def _positives() -> pl.DataFrame:
    """Items 2..7. Train: users 2 and 3 bought item 2, user 4 item 3. Item 4 is bought by
    everybody but only in test; item 5 only in validation; items 6 and 7 never."""
    rows = [
        (2, 2, TRAIN),
        (3, 2, TRAIN),
        (4, 3, TRAIN),
        (4, 5, VALIDATION),
        *[(user, 4, TEST) for user in range(2, 30)],
    ]
    return pl.DataFrame(
        {
            "user_id": [100 + r[0] for r in rows],
            "user_idx": pl.Series([r[0] for r in rows], dtype=pl.Int32),
            "item_idx": pl.Series([r[1] for r in rows], dtype=pl.Int32),
            "timestamp": list(range(len(rows))),
            "split": pl.Series([r[2] for r in rows], dtype=pl.Int8),
        }
    )


def _items_by(negatives: pl.DataFrame) -> dict[tuple[int, int], set[int]]:
    grouped = negatives.group_by("split", "user_idx").agg(pl.col("item_idx").unique())
    return {(s, u): set(items) for s, u, items in grouped.iter_rows()}


def test_negatives_frame_popularity_uses_train_split_popularity_only() -> None:
    positives = _positives()
    negatives = negatives_frame(positives, 8, 50, seed=0, sampler="popularity")
    # only items 2 and 3 have train popularity; each user's own earlier positives are excluded
    items = _items_by(negatives)
    assert items[(TRAIN, 2)] == {3}
    assert items[(TRAIN, 3)] == {3}
    assert items[(TRAIN, 4)] == {2}
    assert items[(VALIDATION, 4)] == {2}
    assert items[(TEST, 2)] == {3}
    assert items[(TEST, 4)] == {2}
    for user in range(5, 30):
        assert items[(TEST, user)] == {2, 3}
    assert set(negatives["item_idx"].to_list()) == {2, 3}  # never 4 (test-only), 5, 6, 7
    assert negatives.height == positives.height * 50
    assert_frame_equal(negatives, negatives_frame(positives, 8, 50, seed=0, sampler="popularity"))

    # the uniform sampler does draw the test-only item for training negatives
    uniform = negatives_frame(positives, 8, 50, seed=0)
    assert 4 in set(uniform.filter(pl.col("split") == TRAIN)["item_idx"].to_list())


def test_negatives_frame_popularity_exponent_and_sampler_check() -> None:
    # test negatives of users 5..29 choose between items 2 (train count 2) and 3 (count 1)
    positives = _positives()
    for exponent, share_of_2 in [(1.0, 2 / 3), (0.0, 1 / 2)]:
        negatives = negatives_frame(
            positives, 8, 2_000, seed=1, sampler="popularity", exponent=exponent
        )
        drawn = negatives.filter((pl.col("split") == TEST) & (pl.col("user_idx") >= 5))
        share = (drawn["item_idx"] == 2).mean()
        std = np.sqrt(share_of_2 * (1 - share_of_2) / drawn.height)
        assert abs(share - share_of_2) < 5 * std, exponent
    with pytest.raises(ValueError, match="uniform, popularity"):
        negatives_frame(positives, 8, 1, seed=0, sampler="popular")


def test_per_user_ties_keep_input_order_on_many_rows() -> None:
    """Two users, two timestamps, 60k rows: a user's last events are the latest-timestamp
    rows latest in the input (a sort that is not stable would mix tied rows)."""
    rng = np.random.default_rng(5)
    users = rng.integers(0, 2, 60_000)
    timestamps = rng.integers(0, 2, 60_000)
    frame = pl.DataFrame({"user_id": users, "timestamp": timestamps})
    out = assign_split(
        frame,
        "per_user_temporal",
        validation_fraction=0.0,
        test_fraction=0.0,
        validation_last_n=500,
        test_last_n=1_000,
    )
    expected = np.full(users.size, TRAIN, dtype=np.int8)
    for user in (0, 1):
        latest = np.flatnonzero((users == user) & (timestamps == 1))
        expected[latest[-1_500:-1_000]] = VALIDATION
        expected[latest[-1_000:]] = TEST
    np.testing.assert_array_equal(out["split"].to_numpy(), expected)
