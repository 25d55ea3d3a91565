"""History features are leak-free: hand-computed values, and later labels change nothing."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from recsys_mtl.config import config_from_dict
from recsys_mtl.data.dataset import Dataset
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.features.history import (
    final_aggregates,
    last_values,
    prior_aggregates,
    recent_items,
    user_recent_ratings,
)
from recsys_mtl.features.pipeline import build_features
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.training.tensors import TensorData

# user 1: events at 10 (train), 20 twice (train, a tie), 30 (test); user 2 at 5, 40.
EVENTS = pl.DataFrame(
    {
        "user_id": [1, 1, 1, 1, 2, 2],
        "item_id": [5, 6, 7, 8, 5, 9],
        "item_idx": [5, 6, 7, 8, 5, 9],
        "timestamp": [10, 20, 20, 30, 5, 40],
        "split": [0, 0, 0, 2, 0, 1],
        "click": [1, 0, 1, 1, 1, 1],
        "purchase": [1, None, 0, 1, 0, 0],
        "rating": [4.0, None, None, 5.0, None, 3.0],
        "sampled": [False] * 6,
    }
)
# two query rows of user 1 at t = 31: one in train, one in test, plus a sampled negative
QUERIES = pl.DataFrame(
    {
        "user_id": [1, 1, 1],
        "item_id": [5, 5, 9],
        "item_idx": [5, 5, 9],
        "timestamp": [31, 31, 31],
        "split": [0, 2, 2],
        "click": [0, 0, 0],
        "purchase": [0, 0, 0],
        "rating": [None, None, None],
        "sampled": [False, False, True],
    }
)


def _rows() -> pl.DataFrame:
    return pl.concat([EVENTS, QUERIES], how="vertical_relaxed")


def test_user_aggregates_count_only_strictly_earlier_events_of_allowed_splits() -> None:
    rows = _rows()
    agg = pl.concat([rows, prior_aggregates(rows, "user_id")], how="horizontal")
    got = agg.select("n", "clicks", "purchases", "rated", "rating_sum", "last_time").rows()
    assert got == [
        (0, 0, 0, 0, 0.0, None),  # user 1 at 10: nothing before
        (1, 1, 1, 1, 4.0, 10),  # at 20: the tie at 20 does not count
        (1, 1, 1, 1, 4.0, 10),
        (3, 2, 1, 1, 4.0, 20),  # test row at 30 sees both events at 20
        (0, 0, 0, 0, 0.0, None),  # user 2 at 5
        (1, 1, 0, 0, 0.0, 5),  # user 2 at 40 (validation) sees its train event
        (3, 2, 1, 1, 4.0, 20),  # train row at 31 must not see the test event at 30
        (4, 3, 2, 2, 9.0, 30),  # test row at 31 sees it
        (4, 3, 2, 2, 9.0, 30),  # a sampled negative sees what its row sees
    ]


def test_one_level_mode_equals_the_general_one_when_splits_follow_time() -> None:
    rows = _rows().filter(~((pl.col("user_id") == 1) & (pl.col("timestamp") == 31)))
    rows = rows.with_columns(
        pl.when(pl.col("timestamp") >= 30).then(2).otherwise(pl.col("split")).alias("split")
    )
    assert_frame_equal(
        prior_aggregates(rows, "user_id", one_level=True), prior_aggregates(rows, "user_id")
    )


def test_item_aggregates_never_see_another_users_later_split() -> None:
    # item 5: user 2 trains on it at t=5; user 1's test event on it at t=3 is earlier in
    # time but in a later split, so user 2's train row must not count it.
    rows = pl.DataFrame(
        {
            "user_id": [1, 2, 3],
            "item_id": [5, 5, 5],
            "timestamp": [3, 5, 7],
            "split": [2, 0, 1],
            "click": [1, 1, 1],
            "purchase": [1, 0, 0],
            "rating": [5.0, None, None],
            "sampled": [False] * 3,
        }
    )
    agg = prior_aggregates(rows, "item_id")
    assert agg["n"].to_list() == [0, 0, 1]  # the validation row sees only the train event
    assert agg["purchases"].to_list() == [0, 0, 0]
    assert agg["last_time"].to_list() == [None, None, 5]


def test_recent_items_are_the_last_clicks_before_the_row() -> None:
    rows = _rows()
    clicks = prior_aggregates(rows, "user_id")["clicks"].to_numpy()
    recent = recent_items(rows.filter(~pl.col("sampled")), rows, clicks, 2)
    assert recent.tolist() == [
        [0, 0],
        [0, 5],
        [0, 5],
        [5, 7],  # the tie at 20: item 6 was not clicked, item 7 was
        [0, 0],
        [0, 5],
        [5, 7],  # train row at 31: not the test click on item 8
        [7, 8],
        [7, 8],
    ]


def test_recent_ratings_are_the_last_ratings_before_the_row() -> None:
    rows = _rows()
    rated = prior_aggregates(rows, "user_id")["rated"].to_numpy()
    events = rows.filter(~pl.col("sampled") & pl.col("rating").is_not_null())
    last = last_values(events, "rating", rows, rated, 2)
    assert last.dtype == np.float32
    assert last.tolist() == [
        [0, 0],
        [0, 4],
        [0, 4],
        [0, 4],  # the clicks at 20 were not rated
        [0, 0],
        [0, 0],  # user 2's rating at 40 is later
        [0, 4],  # train row at 31: not the test rating 5 at 30
        [4, 5],
        [4, 5],
    ]
    state = user_recent_ratings(EVENTS.filter(pl.col("split") <= 1), 2).sort("user_id")
    assert state.rows() == [(1, 4.0, 1), (2, 3.0, 1)]


def test_serving_state_equals_the_as_of_aggregates_after_the_last_event() -> None:
    events = EVENTS.filter(pl.col("split") <= 1)
    later = (
        events.select("user_id", "item_id")
        .unique()
        .with_columns(
            pl.lit(1000).alias("timestamp"),
            pl.lit(1, pl.Int64).alias("split"),
            pl.lit(0).alias("click"),
            pl.lit(None, pl.Int64).alias("purchase"),
            pl.lit(None, pl.Float64).alias("rating"),
            pl.lit(True).alias("sampled"),
        )
    )
    rows = pl.concat([events.drop("item_idx"), later], how="vertical_relaxed")
    for key in ("user_id", "item_id"):
        asof = pl.concat([rows, prior_aggregates(rows, key)], how="horizontal").filter(
            pl.col("sampled")
        )
        state = final_aggregates(events, key)
        joined = asof.unique(key).sort(key).select(key, "n", "clicks", "purchases", "last_time")
        expected = state.select(key, "n", "clicks", "purchases", "last_time")
        assert_frame_equal(joined, expected, check_dtypes=False)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    config = config_from_dict(
        {"source": {"synthetic": {"n_users": 120, "n_items": 40, "impressions_per_user": 30}}}
    )
    return generate_synthetic(config.source.synthetic, 3)


@pytest.mark.parametrize("split", ["per_user_temporal", "global_time", "random"])
def test_no_validation_or_test_label_reaches_the_training_features(
    synthetic: Dataset, split: str
) -> None:
    config = config_from_dict(
        {"features": {"split": split, "recent_ratings": 3}, "tracking": {"enabled": False}}
    )
    before = build_features(synthetic, config)
    assert "user_recent_rating" in before.train.columns
    test_keys = pl.concat([before.validation, before.test]).select(
        "user_id", "item_id", "timestamp"
    )
    # Rewrite every label of validation and test impressions: a leak would move the
    # training rows' history aggregates, rates and recent items.
    flipped = synthetic.impressions.join(
        test_keys.with_columns(pl.lit(True).alias("_later")),
        on=["user_id", "item_id", "timestamp"],
        how="left",
    ).with_columns(
        pl.when(pl.col("_later"))
        .then(1 - pl.col("click"))
        .otherwise(pl.col("click"))
        .alias("click"),
    )
    flipped = flipped.with_columns(
        pl.when(pl.col("_later"))
        .then(pl.col("click"))
        .otherwise(pl.col("purchase"))
        .alias("purchase"),
        pl.when(pl.col("_later") & (pl.col("click") == 1))
        .then(pl.lit(1.0, pl.Float32))
        .when(pl.col("_later"))
        .then(None)
        .otherwise(pl.col("rating"))
        .alias("rating"),
    ).drop("_later")
    assert flipped["click"].to_list() != synthetic.impressions["click"].to_list()
    after = build_features(
        Dataset(flipped, synthetic.users, synthetic.items, name="flipped"), config
    )
    feature_columns = [c for c in before.train.columns if c not in ("click", "purchase", "rating")]
    assert_frame_equal(before.train.select(feature_columns), after.train.select(feature_columns))
    # ...while the later splits do see the change (the test can fail).
    changed = before.test.select(feature_columns).equals(after.test.select(feature_columns))
    assert not changed


def test_history_columns_exist_and_are_standardised_on_train(synthetic: Dataset) -> None:
    config = config_from_dict({"tracking": {"enabled": False}})
    built = build_features(synthetic, config)
    train = built.train
    for name in ("user_clicks", "user_click_rate", "item_impressions", "item_mean_rating"):
        values = train[name].to_numpy().astype(np.float64)
        assert abs(values.mean()) < 1e-3 and abs(values.std() - 1) < 0.05, name
    assert train["recent_items"].dtype == pl.Array(pl.Int32, 10)
    first_rows = train.group_by("user_id").agg(pl.col("user_clicks").first())
    assert first_rows["user_clicks"].n_unique() == 1  # everybody's first row knows nothing


def test_a_model_without_row_features_serves_queries(synthetic: Dataset) -> None:
    from recsys_mtl.model.multitask import build_model
    from recsys_mtl.recommender import Recommender

    config = config_from_dict(
        {
            "features": {"history": False, "recent_items": 0, "time": []},
            "tracking": {"enabled": False},
        }
    )
    built = build_features(synthetic, config)
    assert built.transform.users.spec.rows == [] and built.transform.items.spec.rows == []
    model = build_model(built.transform, config.model, config.tasks)
    recommender = Recommender.from_training(
        model, built.transform, built.train, config.retrieval, config.model
    )
    recommender.build_index("Flat")
    out = recommender.recommend([0, 1, 10**9], k=3)  # a known, another, an unknown user
    assert out.height == 9
    assert recommender.predict(built.test.head(5)).height == 5


def test_item_history_off_keeps_items_static_and_users_dynamic(synthetic: Dataset) -> None:
    from recsys_mtl.model.multitask import build_model
    from recsys_mtl.recommender import Recommender

    config = config_from_dict(
        {
            "features": {"item_history": False, "time": ["recency"]},
            "tracking": {"enabled": False},
        }
    )
    built = build_features(synthetic, config)
    user_rows = {c.name for c in built.transform.users.spec.rows}
    assert {"user_recency", "user_click_rate", "recent_items"} <= user_rows
    assert built.transform.items.spec.rows == []
    assert {"item_recency", "item_click_rate", "item_mean_rating"}.isdisjoint(built.train.columns)
    assert "user_recency" in built.train.columns
    model = build_model(built.transform, config.model, config.tasks).eval()
    recommender = Recommender.from_training(
        model, built.transform, built.train, config.retrieval, config.model
    )
    recommender.build_index("Flat")
    # an item's vector in training (any row, any time) is the one the index serves
    rows = TensorData.from_frame(built.train, config.tasks, built.transform)
    with torch.no_grad():
        trained = model.item_vectors(model.item_encoder(rows.items, rows.item_rows)).numpy()
    served = recommender.item_vectors()[rows.items.numpy() - FIRST]
    np.testing.assert_allclose(trained, served, rtol=1e-5, atol=1e-6)
    assert recommender.recommend([0, 10**9], k=3).height == 6
