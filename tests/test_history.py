"""History features are leak-free and read as of a time: hand-computed values, later
labels change nothing, and the served path reads exactly what training rows saw."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from recsys_mtl.config import config_from_dict, snapshot_seconds
from recsys_mtl.data.dataset import Dataset
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import build_features
from recsys_mtl.features.state import EventState, visible_at
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.training.tensors import TensorData

# user 1: events at 10, 20 twice (a tie), 30; user 2 at 5, 40. Online: visible at once.
EVENTS = pl.DataFrame(
    {
        "user_id": [1, 1, 1, 1, 2, 2],
        "item_id": [5, 6, 7, 8, 5, 9],
        "item_idx": [5, 6, 7, 8, 5, 9],
        "timestamp": [10, 20, 20, 30, 5, 40],
        "visible_at": [10, 20, 20, 30, 5, 40],
        "click": [1, 0, 1, 1, 1, 1],
        "purchase": [1, None, 0, 1, 0, 0],
        "rating": [4.0, None, None, 5.0, None, 3.0],
    }
)


def _read(state: EventState, ids: list, times: list | None) -> pl.DataFrame:
    lo, hi = state.bounds(pl.Series(ids), None if times is None else np.array(times))
    return state.aggregates(lo, hi)


def test_reads_count_only_events_visible_strictly_before_the_time() -> None:
    state = EventState(EVENTS, "user_id")
    got = _read(state, [1, 1, 1, 1, 2, 2], [10, 20, 21, 31, 5, 41])
    assert got.select("n", "clicks", "purchases", "rated", "rating_sum", "last_time").rows() == [
        (0, 0, 0, 0, 0.0, None),  # user 1 at 10: nothing before
        (1, 1, 1, 1, 4.0, 10),  # at 20: the tie at 20 does not count
        (3, 2, 1, 1, 4.0, 20),  # at 21: both events at 20
        (4, 3, 2, 2, 9.0, 30),
        (0, 0, 0, 0, 0.0, None),  # user 2 at 5
        (2, 2, 0, 1, 3.0, 40),
    ]


def test_the_latest_read_and_unknown_ids() -> None:
    state = EventState(EVENTS, "user_id")
    got = _read(state, [2, 1, 99, None], None)  # no time: everything the state holds
    assert got["n"].to_list() == [2, 4, 0, 0]
    assert got["last_time"].to_list() == [40, 30, None, None]
    assert _read(state, ["abc"], [100])["n"].to_list() == [0]  # not an integer id: unknown
    assert state.reference_time == 40


def test_item_reads_and_visibility_later_than_the_event() -> None:
    # snapshot-like: user 1's events published at 25 and 35; item 5 has user 2's event at 5
    events = EVENTS.with_columns(pl.Series("visible_at", [25, 25, 25, 35, 5, 40]))
    state = EventState(events, "item_id")
    got = _read(state, [5, 5, 5, 8, 8], [6, 25, 26, 31, 36])
    assert got["n"].to_list() == [1, 1, 2, 0, 1]  # user 1's event on 5 shows after 25
    assert got["last_time"].to_list() == [5, 5, 10, None, 30]  # the event's own time


def test_recent_items_and_ratings_are_the_last_visible_ones() -> None:
    state = EventState(EVENTS, "user_id")
    lo, hi = state.bounds(pl.Series([1, 1, 1, 2, 7]), np.array([10, 21, 31, 41, 50]))
    assert state.recent_items(lo, hi, 2).tolist() == [[0, 0], [5, 7], [7, 8], [5, 9], [0, 0]]
    recent = state.recent_ratings(lo, hi, 2)
    assert recent.rows() == [(0.0, 0), (4.0, 1), (9.0, 2), (3.0, 1), (0.0, 0)]


def test_snapshot_blocks_publish_each_users_events_together() -> None:
    # user 1: 10 events, 6 train, 2 validation, 2 test; fraction 0.2 -> blocks of 2
    frame = pl.DataFrame(
        {
            "user_id": [1] * 10 + [2] * 3,
            "timestamp": [*range(100, 200, 10), 5, 6, 7],
            "split": [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 2],
        }
    )
    got = visible_at(frame, "snapshot", 0.2).tolist()
    assert got[:10] == [110, 110, 130, 130, 150, 150, 170, 170, 190, 190]
    assert got[10:] == [5, 6, 7]  # 3 events: blocks of max(1, floor(0.6)) = 1
    assert visible_at(frame, "online", 0.2).tolist() == frame["timestamp"].to_list()
    shuffled = frame.with_row_index("r").sample(fraction=1.0, shuffle=True, seed=1)
    again = visible_at(shuffled.drop("r"), "snapshot", 0.2)
    assert again.tolist() == [got[r] for r in shuffled["r"].to_list()]  # order-free


def test_snapshot_windows_of_time_end_at_the_end_of_training() -> None:
    # training ends at 200 (user 2's last training event); windows of 50 end at 100,
    # 150, 200: the same for every user; validation/test stay one block per user
    frame = pl.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2, 2],
            "timestamp": [60, 120, 150, 151, 210, 99, 200, 230],
            "split": [0, 0, 0, 0, 2, 0, 0, 1],
        }
    )
    got = visible_at(frame, "snapshot", 0.2, snapshot_every=50).tolist()
    assert got == [100, 150, 150, 200, 210, 100, 200, 230]
    assert snapshot_seconds("2d") == 172800 and snapshot_seconds("") == 0
    with pytest.raises(RecsysError, match="snapshot_every"):
        snapshot_seconds("soon")


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


# ---------------------------------------------------------------------------- served path


def _bundle(built, config):
    from recsys_mtl.model.multitask import build_model
    from recsys_mtl.recommender import Recommender

    torch.manual_seed(0)
    model = build_model(built.transform, config.model, config.tasks).eval()
    everything = pl.concat([built.train, built.validation, built.test], how="diagonal_relaxed")
    return Recommender.from_training(
        model, built.transform, everything, config.retrieval, config.model
    )


@pytest.mark.parametrize("freshness", ["snapshot", "online"])
def test_the_served_path_reads_what_the_test_rows_were_built_with(
    synthetic: Dataset, freshness: str
) -> None:
    from recsys_mtl.training.tensors import predict_arrays

    config = config_from_dict(
        {
            "features": {"freshness": freshness, "recent_ratings": 3},
            "tracking": {"enabled": False},
        }
    )
    built = build_features(synthetic, config)
    recommender = _bundle(built, config)  # holds every event, test included
    raw = built.test.select("user_id", "item_id", "timestamp")
    served = recommender.predict(raw)
    built_rows = predict_arrays(
        recommender.model, TensorData.from_frame(built.test, config.tasks, built.transform)
    )
    for name, values in built_rows.items():
        np.testing.assert_allclose(served[name].to_numpy(), values, rtol=1e-5, atol=1e-6)


def test_snapshot_test_rows_read_the_state_at_the_end_of_training(synthetic: Dataset) -> None:
    config = config_from_dict({"tracking": {"enabled": False}})
    built = build_features(synthetic, config)
    # every test (and validation) row of a user sees one state: nothing of its own period
    for split in (built.validation, built.test):
        per_user = split.group_by("user_id").agg(
            pl.col("user_clicks").n_unique().alias("a"),
            pl.col("recent_items").n_unique().alias("b"),
        )
        assert per_user["a"].max() == 1 and per_user["b"].max() == 1
    # ...while training rows move with the published blocks (the test can fail)
    moving = built.train.group_by("user_id").agg(pl.col("user_clicks").n_unique())
    assert moving["user_clicks"].max() > 1


def test_online_replay_never_reads_a_rows_own_or_later_label(synthetic: Dataset) -> None:
    config = config_from_dict({"features": {"freshness": "online"}, "tracking": {"enabled": False}})
    built = build_features(synthetic, config)
    test = built.test.filter(~pl.col("item_id").is_null())
    # one user's test rows in time; flip the label of the middle one
    user = test.group_by("user_id").len().sort("len", descending=True)["user_id"][0]
    rows = test.filter(pl.col("user_id") == user).sort("timestamp")
    middle = rows["timestamp"][rows.height // 2]
    key = rows.filter(pl.col("timestamp") == middle).select("user_id", "item_id", "timestamp")
    flipped = (
        synthetic.impressions.join(
            key.with_columns(pl.lit(True).alias("_flip")),
            on=["user_id", "item_id", "timestamp"],
            how="left",
        )
        .with_columns(
            pl.when(pl.col("_flip"))
            .then(1 - pl.col("click"))
            .otherwise(pl.col("click"))
            .alias("click")
        )
        .with_columns(
            pl.when(pl.col("_flip"))
            .then(pl.col("click"))
            .otherwise(pl.col("purchase"))
            .alias("purchase"),
            pl.when(pl.col("_flip")).then(None).otherwise(pl.col("rating")).alias("rating"),
        )
        .drop("_flip")
    )
    rebuilt = build_features(Dataset(flipped, synthetic.users, synthetic.items, name="f"), config)
    before = _bundle(built, config).predict(rows.select("user_id", "item_id", "timestamp"))
    after = _bundle(rebuilt, config).predict(rows.select("user_id", "item_id", "timestamp"))
    up_to = (rows["timestamp"] <= middle).to_numpy()
    assert_frame_equal(before.filter(pl.Series(up_to)), after.filter(pl.Series(up_to)))
    assert not before.filter(pl.Series(~up_to)).equals(after.filter(pl.Series(~up_to)))


@pytest.mark.slow
def test_online_pipeline_metrics_equal_evaluate_on_the_bundle(tmp_path) -> None:
    import json

    from recsys_mtl.cli import main
    from recsys_mtl.pipeline import evaluate_stage, features_stage, index_stage, train_stage

    config = config_from_dict(
        {
            "pipeline": {"output_dir": str(tmp_path / "run"), "seed": 3},
            "source": {"synthetic": {"n_users": 100, "n_items": 40, "impressions_per_user": 30}},
            "features": {"freshness": "online", "recent_ratings": 3},
            "model": {"embedding_dim": 8, "hidden_dims": [16], "output_dim": 8},
            "training": {"epochs": 2, "batch_size": 256, "progress": False},
            "evaluation": {"baselines": ["popularity"], "bootstrap": 0},
            "retrieval": {"index": "Flat", "candidates": 20},
            "tracking": {"enabled": False},
        }
    )
    features = features_stage(config)
    recommender, _ = train_stage(config, features)
    index_stage(config, recommender)
    printed = evaluate_stage(config, recommender, features)
    out = tmp_path / "report.json"
    test_split = tmp_path / "run" / "features" / "test"
    args = ["evaluate", "--model", str(tmp_path / "run" / "model"), "--input", str(test_split)]
    assert main([*args, "--out", str(out)]) == 0
    served = json.loads(out.read_text())["metrics"]
    keys = [k for k in printed if k.startswith("test/") and k in served]
    assert "test/click_auc" in keys and "test/recall@10" in keys
    for key in keys:
        assert served[key] == pytest.approx(printed[key], abs=1e-6), key
