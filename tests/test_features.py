"""Feature stage: vocabularies, per-user temporal split, leak-free negatives, build/save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from recsys_mtl.config import PipelineConfig, config_from_dict
from recsys_mtl.data.dataset import Dataset
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.negatives import negatives_frame, sample_negatives
from recsys_mtl.features.pipeline import build_features, load_features, save_features
from recsys_mtl.features.split import TEST, TRAIN, VALIDATION, temporal_split
from recsys_mtl.features.vocab import FIRST, PAD, UNKNOWN, Vocabulary

# ---------------------------------------------------------------------------- vocabulary


def test_vocabulary_fit_orders_by_count_then_value_and_applies_min_count() -> None:
    values = pl.Series("item_id", [5, 3, 5, 7, 3, 5, 9, 4, 4, None], dtype=pl.Int64)
    vocab = Vocabulary.fit(values, "item_id", min_count=2)
    # counts: 5 -> 3, 3 -> 2, 4 -> 2, 7 -> 1, 9 -> 1; ties (3, 4) by value; 7 and 9 dropped
    assert vocab.values.to_list() == [5, 3, 4]
    assert vocab.size == 5  # PAD, UNKNOWN, three known
    assert (PAD, UNKNOWN, FIRST) == (0, 1, 2)
    encoded = vocab.encode(pl.Series([5, 3, 4, 7, 9, 123, None], dtype=pl.Int64))
    assert encoded.to_list() == [2, 3, 4, 1, 1, 1, 1]
    assert encoded.dtype == pl.Int32


def test_vocabulary_string_ties_and_min_count_one() -> None:
    vocab = Vocabulary.fit(pl.Series(["b", "a", "b", "a", "c"]), "genre")
    assert vocab.values.to_list() == ["a", "b", "c"]
    assert vocab.encode(pl.Series(["c", "a", "zzz"])).to_list() == [4, 2, 1]


def test_vocabulary_decode_round_trip() -> None:
    vocab = Vocabulary.fit(pl.Series([10, 20, 20, 30, 30, 30], dtype=pl.Int64), "user_id")
    raw = pl.Series([30, 10, 20, 30], dtype=pl.Int64)
    assert vocab.decode(vocab.encode(raw).to_numpy()).to_list() == raw.to_list()
    assert vocab.decode(np.array([0, 1, 2, 4])).to_list() == [None, None, 30, 10]


def test_int_vocabulary_casts_numeric_strings_and_rejects_others() -> None:
    vocab = Vocabulary.fit(pl.Series([12, 13, 13], dtype=pl.Int64), "user_id")
    assert vocab.encode(pl.Series(["12", "13", "99"])).to_list() == [3, 2, 1]
    with pytest.raises(RecsysError) as info:
        vocab.encode(pl.Series(["abc"]), where="request")
    message = str(info.value)
    assert "'user_id'" in message and "abc" in message and "request" in message


def test_vocabulary_save_load_round_trip(tmp_path: Path) -> None:
    for values in (
        pl.Series([3, 1, 3, 2], dtype=pl.Int64),
        pl.Series(["x", "y", "y", "z"]),
    ):
        vocab = Vocabulary.fit(values, "key")
        path = tmp_path / f"vocab_{values.dtype}.parquet"
        vocab.save(path)
        loaded = Vocabulary.load(path, "key")
        assert_series_equal(loaded.values, vocab.values)
        assert loaded.dtype == vocab.dtype
        assert_series_equal(loaded.encode(values), vocab.encode(values))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


# ---------------------------------------------------------------------------- temporal split


def test_temporal_split_hand_made() -> None:
    rows = [
        # (user_id, timestamp, expected split) with validation 0.1, test 0.2
        # user 10: 10 events -> 2 test (ts 90, 100), 1 validation (ts 80)
        (10, 50, TRAIN),
        (10, 10, TRAIN),
        (20, 3, TRAIN),
        (10, 100, TEST),
        (10, 30, TRAIN),
        (20, 1, TRAIN),
        (10, 90, TEST),
        (10, 20, TRAIN),
        (20, 5, TEST),  # user 20: 5 events -> 1 test, 0 validation
        (10, 80, VALIDATION),
        (10, 40, TRAIN),
        (20, 2, TRAIN),
        (10, 70, TRAIN),
        (10, 60, TRAIN),
        (20, 4, TRAIN),
        (30, 7, TRAIN),  # user 30: a single event stays in train
        # user 40: a tie at ts 8 across the validation/test boundary keeps input order
        *[(40, t, TRAIN) for t in (1, 2, 3, 4, 5, 6, 7)],
        (40, 9, TEST),
        (40, 8, VALIDATION),
        (40, 8, TEST),
    ]
    frame = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "timestamp": [r[1] for r in rows],
            "row": list(range(len(rows))),
        }
    )
    out = temporal_split(frame, validation_fraction=0.1, test_fraction=0.2)
    assert out["row"].to_list() == frame["row"].to_list()  # order unchanged
    assert out["split"].dtype == pl.Int8
    assert out["split"].to_list() == [r[2] for r in rows]


def _assert_split_is_temporal(frame: pl.DataFrame) -> None:
    """No user's train row is later than any of their validation/test rows, nor a
    validation row later than a test row."""
    spans = frame.group_by("user_id", "split").agg(
        pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last")
    )
    wide = {
        code: spans.filter(pl.col("split") == code).select("user_id", "first", "last")
        for code in (TRAIN, VALIDATION, TEST)
    }
    for early, late in [(TRAIN, VALIDATION), (TRAIN, TEST), (VALIDATION, TEST)]:
        joined = wide[early].join(wide[late], on="user_id", suffix="_late")
        assert joined.height > 0
        assert (joined["last"] <= joined["first_late"]).all(), (early, late)


def test_temporal_split_on_random_data_counts_and_order() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 40, 50)
    frame = pl.DataFrame(
        {
            "user_id": np.repeat(np.arange(50), counts),
            "timestamp": rng.integers(0, 1000, counts.sum()),
        }
    )
    out = temporal_split(frame, 0.1, 0.3)
    _assert_split_is_temporal(out)
    per_user = out.group_by("user_id").agg(
        pl.len().alias("n"),
        (pl.col("split") == TEST).sum().alias("test"),
        (pl.col("split") == VALIDATION).sum().alias("val"),
    )
    n = per_user["n"].to_numpy()
    assert (per_user["test"].to_numpy() == np.floor(n * 0.3 + 1e-9)).all()
    assert (per_user["val"].to_numpy() == np.floor(n * 0.1 + 1e-9)).all()


# ---------------------------------------------------------------------------- negatives


def test_sample_negatives_never_excluded_in_range_and_reproducible() -> None:
    n_items = 8  # known indices 2..7
    users = np.array([0, 1, 2, 0])
    exclude_users = np.array([0, 0, 0, 1, 1])
    exclude_items = np.array([2, 3, 4, 7, 6])
    rows, items = sample_negatives(
        users, n_items, 50, exclude_users, exclude_items, np.random.default_rng(3)
    )
    assert rows.size == users.size * 50  # nothing exhausted
    assert items.min() >= FIRST and items.max() < n_items
    excluded = {(0, 2), (0, 3), (0, 4), (1, 7), (1, 6)}
    assert not {(int(users[r]), int(i)) for r, i in zip(rows, items, strict=True)} & excluded
    # user 2 excludes nothing: over 50 draws every known item shows up
    assert set(items[users[rows] == 2].tolist()) == set(range(FIRST, n_items))
    again = sample_negatives(
        users, n_items, 50, exclude_users, exclude_items, np.random.default_rng(3)
    )
    np.testing.assert_array_equal(rows, again[0])
    np.testing.assert_array_equal(items, again[1])
    other = sample_negatives(
        users, n_items, 50, exclude_users, exclude_items, np.random.default_rng(4)
    )
    assert not np.array_equal(items, other[1])


def test_sample_negatives_user_with_every_item_excluded_gets_none() -> None:
    rows, items = sample_negatives(
        np.array([0, 1]),
        5,
        4,
        np.array([0, 0, 0]),
        np.array([2, 3, 4]),
        np.random.default_rng(0),
    )
    assert rows.tolist() == [1, 1, 1, 1]  # only user 1's rows
    assert set(items.tolist()) <= {2, 3, 4}


def test_negatives_are_leak_free() -> None:
    """Items 2, 3, 4. User 0 bought item 2 in train and item 3 in test. A training negative
    may be item 3 (training must not know the future); a test negative never is."""
    positives = pl.DataFrame(
        {
            "user_id": [100, 100],
            "user_idx": [2, 2],
            "item_idx": [2, 3],
            "timestamp": [10, 20],
            "split": pl.Series([TRAIN, TEST], dtype=pl.Int8),
        }
    ).with_columns(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32))
    negatives = negatives_frame(positives, n_items=5, per_positive=200, seed=0)
    train = negatives.filter(pl.col("split") == TRAIN)
    test = negatives.filter(pl.col("split") == TEST)
    assert train.height == 200 and test.height == 200
    assert set(train["item_idx"].to_list()) == {3, 4}  # a later positive is allowed
    assert set(test["item_idx"].to_list()) == {4}  # never any known positive
    # negatives copy their positive's timestamp and user, and carry negative labels
    assert set(train["timestamp"].to_list()) == {10}
    assert set(test["timestamp"].to_list()) == {20}
    assert set(negatives["user_id"].to_list()) == {100}
    assert negatives["click"].to_list() == [0] * 400
    assert negatives["purchase"].to_list() == [0] * 400
    assert negatives["rating"].null_count() == 400
    again = negatives_frame(positives, n_items=5, per_positive=200, seed=0)
    assert_frame_equal(negatives, again)


# ---------------------------------------------------------------------------- build_features

NEW_ITEM = 10_000


def _config(**features: object) -> PipelineConfig:
    return config_from_dict(
        {
            "pipeline": {"seed": 3},
            "source": {"synthetic": {"n_users": 60, "n_items": 40, "impressions_per_user": 30}},
            "features": {"validation_fraction": 0.1, "test_fraction": 0.2, **features},
            "tracking": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """Synthetic data where one user's latest impression is an item never seen before."""
    config = _config()
    data = generate_synthetic(config.source.synthetic, config.pipeline.seed)
    impressions = data.impressions.with_row_index("row")
    user = impressions["user_id"].value_counts().sort("count", descending=True)["user_id"][0]
    latest = impressions.filter(pl.col("user_id") == user).sort("timestamp")["row"].to_list()[-1]
    impressions = impressions.with_columns(
        pl.when(pl.col("row") == latest)
        .then(pl.lit(NEW_ITEM, dtype=pl.Int64))
        .otherwise(pl.col("item_id"))
        .alias("item_id")
    ).drop("row")
    items = pl.concat(
        [
            data.items,
            pl.DataFrame(
                {
                    "item_id": [NEW_ITEM],
                    "category": ["category_new"],
                    "price": [1.0],
                    "tags": [["tag_new"]],
                },
                schema=data.items.schema,
            ),
        ]
    )
    return Dataset(impressions, data.users, items, positive_only=False, name="synthetic")


@pytest.fixture(scope="module")
def features(dataset: Dataset):
    return build_features(dataset, _config())


def test_vocabularies_fitted_on_training_rows_only(dataset: Dataset, features) -> None:
    train, test = features.train, features.test
    items = features.transform.items
    # the item vocabulary is exactly Vocabulary.fit over training item ids
    expected = Vocabulary.fit(train["item_id"], "item_id")
    assert_series_equal(items.ids.values, expected.values)
    assert NEW_ITEM not in items.ids.values.to_list()
    new_rows = test.filter(pl.col("item_id") == NEW_ITEM)
    assert new_rows.height == 1
    assert new_rows["item_idx"].to_list() == [UNKNOWN]
    assert NEW_ITEM not in features.train["item_id"].to_list()
    assert NEW_ITEM not in features.validation["item_id"].to_list()
    # every other row maps to a known index consistent with the vocabulary
    others = pl.concat([features.train, features.validation, test]).filter(
        pl.col("item_id") != NEW_ITEM
    )
    assert (others["item_idx"] >= FIRST).all()
    assert_series_equal(
        items.ids.decode(others["item_idx"].to_numpy()), others["item_id"], check_names=False
    )
    # side-feature vocabularies only hold values of items in the training vocabulary
    assert "category_new" not in items.vocabularies["category"].values.to_list()
    assert "tag_new" not in items.vocabularies["tags"].values.to_list()
    assert set(features.transform.users.ids.values.to_list()) == set(train["user_id"].to_list())


def test_build_features_split_is_per_user_temporal(dataset: Dataset, features) -> None:
    frames = [
        frame.with_columns(pl.lit(code, pl.Int8).alias("split"))
        for code, frame in [
            (TRAIN, features.train),
            (VALIDATION, features.validation),
            (TEST, features.test),
        ]
    ]
    combined = pl.concat(frames)
    assert combined.height == dataset.impressions.height
    _assert_split_is_temporal(combined)
    assert features.spec["rows"] == {
        "train": features.train.height,
        "validation": features.validation.height,
        "test": features.test.height,
    }
    n = combined.group_by("user_id").agg(
        pl.len().alias("n"), (pl.col("split") == TEST).sum().alias("test")
    )
    assert (n["test"].to_numpy() == np.floor(n["n"].to_numpy() * 0.2 + 1e-9)).all()


def test_positive_only_source_gets_sampled_negatives(dataset: Dataset) -> None:
    positives = dataset.impressions.filter(pl.col("click") == 1)
    data = Dataset(positives, dataset.users, dataset.items, positive_only=True, name="pos")
    built = build_features(data, _config(negatives_per_positive=3))
    assert built.spec["negatives"]["per_positive"] == 3
    known: dict[int, set[int]] = {}
    for name in ("train", "validation", "test"):
        frame = built.splits[name]
        pos = frame.filter(pl.col("click") == 1)
        neg = frame.filter(pl.col("click") == 0)
        assert neg.height == 3 * pos.height, name
        assert neg["purchase"].to_list() == [0] * neg.height
        assert neg["rating"].null_count() == neg.height
        assert (neg["item_idx"] >= FIRST).all()
        # the item_id column of a negative decodes its item index
        assert_series_equal(
            built.transform.items.ids.decode(neg["item_idx"].to_numpy()),
            neg["item_id"],
            check_names=False,
        )
        # a negative is never a positive of that user in this split or an earlier one
        for user, item in pos.select("user_idx", "item_idx").iter_rows():
            known.setdefault(user, set()).add(item)
        clashes = [
            (u, i) for u, i in neg.select("user_idx", "item_idx").iter_rows() if i in known[u]
        ]
        assert clashes == [], name
    again = build_features(data, _config(negatives_per_positive=3))
    assert_frame_equal(again.train, built.train)


def test_save_load_features_round_trip(tmp_path: Path, features) -> None:
    folder = tmp_path / "features"
    save_features(features, folder)
    save_features(features, folder)  # replacing an existing folder works too
    loaded = load_features(folder)
    for name in ("train", "validation", "test"):
        assert_frame_equal(loaded.splits[name], features.splits[name])
    assert loaded.spec == json.loads(json.dumps(features.spec))  # tuples come back as lists
    for side in ("user", "item"):
        a, b = features.transform.side(side), loaded.transform.side(side)
        assert_series_equal(b.ids.values, a.ids.values)
        assert b.spec == a.spec
        ta, tb = a.feature_table(), b.feature_table()
        np.testing.assert_array_equal(ta.categorical, tb.categorical)
        np.testing.assert_array_equal(ta.numeric, tb.numeric)
        assert ta.lists.keys() == tb.lists.keys()
        for key in ta.lists:
            np.testing.assert_array_equal(ta.lists[key], tb.lists[key])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]  # no temp folders
    with pytest.raises(RecsysError, match="no features"):
        load_features(tmp_path / "missing")


def test_side_features_encoded_into_feature_table(dataset: Dataset, features) -> None:
    items = features.transform.items
    spec = items.spec
    assert [(c.name, c.kind) for c in spec.table] == [
        ("category", "categorical"),
        ("price", "numeric"),
        ("tags", "list"),
    ]
    assert next(iter(spec.categorical)) == "category"  # table features come before row features
    table = items.feature_table()
    n = items.ids.size
    assert table.lists["tags"].shape == (n, 8)
    # reserved rows: unknown category, zero numerics, empty lists
    assert (table.lists["tags"][:FIRST] == PAD).all()
    assert (table.categorical[:FIRST] == UNKNOWN).all()
    assert (table.numeric[:FIRST] == 0).all()
    raw = dataset.items.join(pl.DataFrame({"item_id": items.ids.values}), on="item_id", how="semi")
    mean, std = raw["price"].cast(pl.Float64).mean(), raw["price"].cast(pl.Float64).std()
    tags_vocab = items.vocabularies["tags"]
    category_vocab = items.vocabularies["category"]
    for index in (FIRST, FIRST + 5, n - 1):
        item_id = items.ids.values[index - FIRST]
        row = dataset.items.filter(pl.col("item_id") == item_id).row(0, named=True)
        tags = tags_vocab.encode(pl.Series(row["tags"])).to_list()
        assert len(tags) == 2 and min(tags) >= FIRST
        assert table.lists["tags"][index].tolist() == tags + [PAD] * (8 - 2)
        assert (
            table.categorical[index, 0]
            == category_vocab.encode(pl.Series([row["category"]])).item()
        )
        assert table.numeric[index, 0] == pytest.approx((row["price"] - mean) / std, rel=1e-5)


def test_item_popularity_is_each_items_training_clicks_bucketed(dataset: Dataset) -> None:
    """`features.item_popularity`: one static item feature, the item's clicks in the
    training split (never a validation or test click), bucketed at the quantiles of the
    training items' counts; an item with no training click (NEW_ITEM, seen only in test)
    reads the lowest bucket."""
    features = build_features(dataset, _config(item_popularity=True))
    items = features.transform.items
    names = [c.name for c in items.spec.table]
    spec = items.spec.table[names.index("popularity")]
    assert spec.kind == "bucket"
    clicks = dict(features.train.filter(pl.col("click") == 1).group_by("item_id").len().iter_rows())
    known = items.ids.values.to_list()
    counts = np.array([clicks.get(item, 0) for item in known], dtype=np.float64)
    assert counts.sum() == features.train["click"].sum() > 0
    edges = np.unique(np.quantile(counts, np.linspace(0, 1, 11)[1:-1]))
    assert spec.edges == pytest.approx(edges.tolist())
    column = [c.name for c in items.spec.table if c.kind in ("categorical", "bucket")]
    table = items.feature_table().categorical[:, column.index("popularity")]
    expected = np.searchsorted(edges, counts, "right") + FIRST
    assert table[FIRST:].tolist() == expected.tolist()
    assert len(set(expected.tolist())) > 3  # the counts spread over several buckets
    # a cold item's table features come from the saved raw table, as the recommender reads
    cold_row = items.table.filter(pl.col("item_id") == NEW_ITEM)
    assert cold_row["popularity"].to_list() == [0.0]
    assert items.encode_table(cold_row).categorical[0, column.index("popularity")] == FIRST


def test_item_popularity_refuses_an_item_table_that_has_the_column(dataset: Dataset) -> None:
    items = dataset.items.with_columns(pl.lit(1.0).alias("popularity"))
    clash = Dataset(dataset.impressions, dataset.users, items, positive_only=False, name="x")
    with pytest.raises(RecsysError, match="item_popularity") as info:
        build_features(clash, _config(item_popularity=True))
    assert "rename" in str(info.value)
