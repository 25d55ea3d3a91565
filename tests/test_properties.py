"""Property-based tests (hypothesis) of the metrics and the feature transforms: laws
that hold for every input, checked on many generated ones."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recsys_mtl.evaluation.metrics import (
    auc,
    gauc,
    per_user_ranking,
    ranking_metrics,
    rmse,
)
from recsys_mtl.features import lookup
from recsys_mtl.features.lookup import KeyPositions
from recsys_mtl.features.split import SPLIT_NAMES, TRAIN, assign_split
from recsys_mtl.features.vocab import FIRST, UNKNOWN, Vocabulary
from recsys_mtl.training.distributed import Distributed

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# allow_subnormal=False: a library in the suite may switch the CPU to flush-to-zero mode
# (compiled with fast-math), where hypothesis refuses to draw subnormal floats.
finite = st.floats(
    -1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32
)


@st.composite
def labelled_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 60))
    labels = draw(arrays(np.int8, n, elements=st.integers(0, 1)))
    assume(0 < labels.sum() < n)  # AUC needs both classes
    scores = draw(arrays(np.float64, n, elements=finite))
    return labels, scores


# ------------------------------------------------------------------------------ AUC


@SETTINGS
@given(labelled_scores())
def test_auc_is_invariant_under_strictly_increasing_transforms(data) -> None:
    labels, scores = data
    expected = auc(labels, scores)
    assert 0.0 <= expected <= 1.0
    for transformed in (scores * 3.0 + 7.0, np.exp(scores / 1e3), np.arctan(scores / 100)):
        # the transforms are strictly increasing; ties stay ties only where floats collapse
        if len(np.unique(transformed)) == len(np.unique(scores)):
            assert np.isclose(auc(labels, transformed), expected)


@SETTINGS
@given(labelled_scores())
def test_auc_of_reversed_scores_is_one_minus_auc(data) -> None:
    labels, scores = data
    assert np.isclose(auc(labels, -scores), 1.0 - auc(labels, scores))


@SETTINGS
@given(labelled_scores())
def test_auc_equals_the_pairwise_definition(data) -> None:
    labels, scores = data
    positive, negative = scores[labels == 1], scores[labels == 0]
    wins = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    assert np.isclose(auc(labels, scores), wins + 0.5 * ties)


@SETTINGS
@given(labelled_scores(), st.permutations(range(60)))
def test_auc_does_not_depend_on_row_order(data, order) -> None:
    labels, scores = data
    permutation = np.array([i for i in order if i < len(labels)])
    assert np.isclose(auc(labels[permutation], scores[permutation]), auc(labels, scores))


@SETTINGS
@given(labelled_scores())
def test_gauc_of_one_user_is_the_auc(data) -> None:
    labels, scores = data
    users = np.zeros(len(labels), dtype=np.int64)
    assert np.isclose(gauc(users, labels, scores), auc(labels, scores))


# --------------------------------------------------------------------------- RMSE


@SETTINGS
@given(arrays(np.float64, st.integers(1, 50), elements=finite), finite)
def test_rmse_is_zero_on_itself_and_shift_equals_offset(values, offset) -> None:
    assert rmse(values, values) == 0.0
    assert np.isclose(rmse(values, values + offset), abs(offset), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- ranking


@st.composite
def rankings(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top (U, K) distinct items per row, relevant CSR indptr, items)."""
    n_users = draw(st.integers(1, 8))
    n_items = draw(st.integers(3, 30))
    k = draw(st.integers(1, n_items))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    relevant = [rng.choice(n_items, size=rng.integers(0, n_items), replace=False) for _ in top]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in relevant])]).astype(np.int64)
    items = np.concatenate(relevant).astype(np.int64) if indptr[-1] else np.zeros(0, np.int64)
    return top, indptr, items


@SETTINGS
@given(rankings())
def test_ranking_metrics_are_bounded_and_monotone_in_k(data) -> None:
    top, indptr, items = data
    ks = list(range(1, top.shape[1] + 1))
    per_user = per_user_ranking(top, indptr, items, ks)
    has_relevant = np.diff(indptr) > 0
    for name in ("recall", "ndcg", "hitrate", "precision", "mrr"):
        for k in ks:
            values = per_user[f"{name}@{k}"][has_relevant]
            assert np.all((values >= 0) & (values <= 1 + 1e-12)), (name, k, values)
    for k, bigger in itertools.pairwise(ks):
        for name in ("recall", "hitrate", "mrr"):  # more positions never lose a hit
            assert np.all(
                per_user[f"{name}@{bigger}"][has_relevant]
                >= per_user[f"{name}@{k}"][has_relevant] - 1e-12
            )


@SETTINGS
@given(rankings())
def test_a_perfect_ranking_scores_one(data) -> None:
    top, indptr, items = data
    n_users = top.shape[0]
    k = top.shape[1]
    # rank each user's relevant items first
    perfect = np.full_like(top, -1)
    for user in range(n_users):
        mine = items[indptr[user] : indptr[user + 1]][:k]
        perfect[user, : len(mine)] = mine
    metrics = per_user_ranking(perfect, indptr, items, [k])
    has_relevant = np.diff(indptr) > 0
    assert np.allclose(metrics[f"ndcg@{k}"][has_relevant], 1.0)
    assert np.allclose(metrics[f"hitrate@{k}"][has_relevant], 1.0)
    assert np.all(np.isnan(metrics[f"ndcg@{k}"][~has_relevant]))
    means = ranking_metrics(perfect, indptr, items, [k])
    assert np.isnan(means[f"ndcg@{k}"]) == (not has_relevant.any())


# ---------------------------------------------------------------------- vocabularies


ids = st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=80)


@SETTINGS
@given(ids, ids, st.integers(1, 3))
def test_vocabulary_round_trips_known_ids_and_maps_unknown_ones_to_one(
    train, query, min_count
) -> None:
    vocabulary = Vocabulary.fit(pl.Series(train, dtype=pl.Int64), "user_id", min_count)
    values, freq = np.unique(np.array(train), return_counts=True)
    known = set(values[freq >= min_count].tolist())
    encoded = vocabulary.encode(pl.Series(query, dtype=pl.Int64)).to_numpy()
    for value, index in zip(query, encoded, strict=True):
        if value in known:
            assert index >= FIRST
        else:
            assert index == UNKNOWN
    decoded = vocabulary.decode(encoded).to_list()
    assert [v if v in known else None for v in query] == decoded
    assert vocabulary.size == len(known) + FIRST


@SETTINGS
@given(ids)
def test_vocabulary_indices_are_contiguous_and_ordered_by_count(train) -> None:
    vocabulary = Vocabulary.fit(pl.Series(train, dtype=pl.Int64), "item_id")
    indices = vocabulary.encode(vocabulary.values).to_numpy()
    assert sorted(indices.tolist()) == list(range(FIRST, vocabulary.size))
    counts = {v: train.count(v) for v in set(train)}
    ordered = [counts[v] for v in vocabulary.values.to_list()]
    assert ordered == sorted(ordered, reverse=True)


# -------------------------------------------------------------------------- splits


@st.composite
def events(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 120))
    users = draw(arrays(np.int64, n, elements=st.integers(0, 9)))
    times = draw(arrays(np.int64, n, elements=st.integers(0, 50)))
    return pl.DataFrame({"user_id": users, "timestamp": times, "row": np.arange(n)})


fractions = st.tuples(
    st.floats(0.0, 0.4, allow_subnormal=False), st.floats(0.0, 0.4, allow_subnormal=False)
)


@SETTINGS
@given(events(), fractions)
def test_per_user_temporal_split_never_puts_the_future_in_training(frame, fractions) -> None:
    validation, test = fractions
    split = assign_split(
        frame, "per_user_temporal", validation_fraction=validation, test_fraction=test
    )
    assert split["row"].to_list() == frame["row"].to_list()  # row order kept
    assert set(split["split"].unique().to_list()) <= set(SPLIT_NAMES)
    per_user = split.group_by("user_id").agg(
        pl.col("timestamp").filter(pl.col("split") == TRAIN).max().alias("last_train"),
        pl.col("timestamp").filter(pl.col("split") > TRAIN).min().alias("first_later"),
        (pl.col("split") == TRAIN).sum().alias("train_rows"),
    )
    assert (per_user["train_rows"] >= 1).all()  # every user keeps a training row
    later = per_user.filter(pl.col("first_later").is_not_null())
    assert (later["last_train"] <= later["first_later"]).all()


@SETTINGS
@given(events(), fractions)
def test_global_time_split_is_one_cut_in_time(frame, fractions) -> None:
    validation, test = fractions
    split = assign_split(frame, "global_time", validation_fraction=validation, test_fraction=test)
    by_split = split.group_by("split").agg(
        pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last")
    )
    bounds = {row["split"]: (row["first"], row["last"]) for row in by_split.iter_rows(named=True)}
    present = sorted(bounds)
    for earlier, later in itertools.pairwise(present):
        assert bounds[earlier][1] < bounds[later][0]  # no timestamp on both sides


# ------------------------------------------------------------------ distributed shares


@SETTINGS
@given(st.integers(0, 10_000), st.integers(1, 16))
def test_rank_shares_partition_the_rows_with_equal_lengths(rows, world) -> None:
    shares = [Distributed(rank, world).share(rows) for rank in range(world)]
    assert len({sum(b - a for a, b in share) for share in shares}) == 1
    covered = np.zeros(rows, dtype=np.int64)
    for share in shares:
        for a, b in share:
            covered[a:b] += 1
    assert (covered >= 1).all() and covered.sum() - rows < world


# ---------------------------------------------------------------------------- key lookups

key_values = st.one_of(
    st.lists(st.integers(-50, 50), unique=True, max_size=60).map(
        lambda v: pl.Series(v, dtype=pl.Int64)
    ),
    st.lists(st.text(max_size=3), unique=True, max_size=60).map(
        lambda v: pl.Series(v, dtype=pl.String)
    ),
)


@SETTINGS
@given(key_values, st.data())
def test_key_positions_by_search_and_by_join_equal_a_dictionary(
    keys: pl.Series, data: st.DataObject
) -> None:
    """Both ways of finding ids (binary search for a few, hash join for many) give each
    id's position in the keys, and null for ids not there and for null ids."""
    others = [7_777] if keys.dtype == pl.Int64 else ["not-a-key"]
    pool = [*keys.to_list(), *others, None]
    asked = pl.Series(data.draw(st.lists(st.sampled_from(pool), max_size=30)), dtype=keys.dtype)
    where = {key: row for row, key in enumerate(keys.to_list())}
    expected = [where.get(value) if value is not None else None for value in asked.to_list()]
    for share in (0.0, float("inf")):  # always join, always search
        lookup.SEARCH_BELOW_SHARE = share
        try:
            assert KeyPositions(keys).positions(asked).to_list() == expected
        finally:
            lookup.SEARCH_BELOW_SHARE = 1 / 16
