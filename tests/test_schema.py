"""The impressions contract: canonical dtypes, and one clear error per kind of bad input."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_mtl.data.schema import (
    check_side_coverage,
    to_polars,
    validate_impressions,
    validate_side_table,
)
from recsys_mtl.errors import RecsysError

T0 = 1_700_000_000


def base(**columns: Any) -> dict[str, Any]:
    """Three valid impressions; keyword arguments replace (or with None drop) columns."""
    data: dict[str, Any] = {
        "user_id": [1, 2, 3],
        "item_id": [10, 20, 30],
        "timestamp": [T0, T0 + 60, T0 + 120],
        "click": [1, 0, 1],
    }
    data.update(columns)
    return {k: v for k, v in data.items() if v is not None}


def error_for(data: dict[str, Any] | pl.DataFrame, **options: Any) -> str:
    frame = data if isinstance(data, pl.DataFrame) else pl.DataFrame(data, strict=False)
    with pytest.raises(RecsysError) as info:
        validate_impressions(frame, "events.parquet", **options)
    message = str(info.value)
    assert "Fix:" in message
    assert "events.parquet" in message
    return message


# ------------------------------------------------------------------ canonical form


def test_canonical_dtypes_and_defaults() -> None:
    out = validate_impressions(
        pl.DataFrame(base(click=[True, False, True], device=["ios", "web", "ios"])).with_columns(
            pl.col("user_id").cast(pl.Int16), pl.col("item_id").cast(pl.UInt32)
        ),
        "t",
    )
    assert out.columns == [
        "user_id", "item_id", "timestamp", "click", "purchase", "rating", "device"
    ]  # fmt: skip
    assert out.schema["user_id"] == pl.Int64 and out.schema["item_id"] == pl.Int64
    assert out.schema["timestamp"] == pl.Int64
    assert out.schema["click"] == pl.Int8 and out["click"].to_list() == [1, 0, 1]
    assert out.schema["purchase"] == pl.Int8 and out["purchase"].null_count() == 3
    assert out.schema["rating"] == pl.Float32 and out["rating"].null_count() == 3
    assert out["device"].to_list() == ["ios", "web", "ios"]


def test_string_ids_and_oracle_columns_kept() -> None:
    data = base(
        user_id=["u1", "u2", "u3"], item_id=["a", "b", "c"], true_click_prob=[0.1, 0.2, 0.3]
    )
    out = validate_impressions(pl.DataFrame(data), "t")
    assert out.schema["user_id"] == pl.String and out.schema["item_id"] == pl.String
    assert out["true_click_prob"].to_list() == [0.1, 0.2, 0.3]


def test_purchase_and_rating_kept_with_nulls() -> None:
    out = validate_impressions(
        pl.DataFrame(base(purchase=[1, 0, None], rating=[4.5, None, 0.0])), "t"
    )
    assert out["purchase"].to_list() == [1, 0, None]
    assert out["rating"].to_list() == [4.5, None, 0.0]


def test_pandas_and_polars_give_the_same_table() -> None:
    data = base(purchase=[1, None, 0], rating=[None, 3.0, 4.5], device=["a", "b", "a"])
    from_pandas = validate_impressions(pd.DataFrame(data), "t")
    from_polars = validate_impressions(pl.DataFrame(data), "t")
    assert_frame_equal(from_pandas, from_polars)
    assert from_pandas["purchase"].to_list() == [1, None, 0]  # pandas NaN became null


def test_lazy_frames_are_collected() -> None:
    lazy = pl.DataFrame(base()).lazy()
    assert to_polars(lazy, "t").shape == (3, 4)


def test_datetime_timestamps_become_epoch_seconds() -> None:
    times = [
        dt.datetime(2024, 1, 1, 0, 0, 0),
        dt.datetime(2024, 1, 1, 0, 1, 0),
        dt.datetime(2024, 1, 2, 0, 0, 0),
    ]
    expected = [1_704_067_200, 1_704_067_260, 1_704_153_600]
    polars_out = validate_impressions(pl.DataFrame(base(timestamp=times)), "t")
    assert polars_out["timestamp"].to_list() == expected
    pandas_out = validate_impressions(pd.DataFrame(base(timestamp=pd.to_datetime(times))), "t")
    assert pandas_out["timestamp"].to_list() == expected
    dates = pl.DataFrame(base(timestamp=[d.date() for d in times]))
    assert validate_impressions(dates, "t")["timestamp"].to_list() == [
        1_704_067_200, 1_704_067_200, 1_704_153_600
    ]  # fmt: skip


def test_timezone_aware_and_iso_text_timestamps() -> None:
    aware = pl.DataFrame(base(timestamp=["2024-01-01T01:00:00+01:00"] * 3))
    assert validate_impressions(aware, "t")["timestamp"].to_list() == [1_704_067_200] * 3
    naive = pl.DataFrame(base(timestamp=["2024-01-01 00:00:00"] * 3))
    assert validate_impressions(naive, "t")["timestamp"].to_list() == [1_704_067_200] * 3


@pytest.mark.parametrize("scale", [1, 1_000, 1_000_000, 1_000_000_000])
def test_integer_timestamp_units_are_detected(scale: int) -> None:
    seconds = [T0, T0 + 1, 1_000_000_000]
    data = base(timestamp=[s * scale + (scale - 1) for s in seconds])  # sub-second remainder
    assert validate_impressions(pl.DataFrame(data), "t")["timestamp"].to_list() == seconds


# ------------------------------------------------------------------------ errors


def test_empty_input() -> None:
    message = error_for(pl.DataFrame(base()).head(0))
    assert "the impressions table has no rows" in message
    assert "Fix: pass a table with at least one impression" in message


def test_missing_column_suggests_a_close_name() -> None:
    data = base()
    data["userId"] = data.pop("user_id")
    message = error_for(data)
    assert "'user_id'" in message
    assert "rename 'userId' to 'user_id'" in message
    assert "columns present: item_id, timestamp, click, userId" in message


def test_missing_column_without_close_name() -> None:
    message = error_for(base(click=None))
    assert "required column 'click' is missing" in message
    assert "add a 'click' column" in message


def test_click_of_wrong_dtype() -> None:
    message = error_for(base(click=["yes", "no", "yes"]))
    assert "column 'click' has dtype String" in message
    assert "row=0, user_id=1, item_id=10, click='yes'" in message  # an example row
    assert "map it to 0/1 before loading" in message


def test_id_of_wrong_dtype() -> None:
    message = error_for(base(item_id=[1.5, 2.0, 3.0]))
    assert "column 'item_id' has dtype Float64" in message
    assert "row=0" in message


def test_null_ids() -> None:
    message = error_for(base(user_id=[1, None, 3]))
    assert "column 'user_id' has 1 null value(s)" in message
    assert "row=1, user_id=None, item_id=20" in message
    assert "Fix: drop or fill the rows without a user_id" in message


def test_null_timestamp() -> None:
    message = error_for(base(timestamp=[T0, None, None]))
    assert "column 'timestamp' has 2 null value(s)" in message
    assert "row=1" in message and "row=2" in message


def test_unparseable_text_timestamp() -> None:
    message = error_for(base(timestamp=["2024-01-01 00:00:00", "yesterday", "2024-01-02 00:00:00"]))
    assert "column 'timestamp'" in message and "timestamp='yesterday'" in message


def test_mixed_timestamp_units() -> None:
    message = error_for(base(timestamp=[T0, T0 * 1000, T0 + 5]))
    assert "column 'timestamp' mixes units (s, ms)" in message
    assert "row=0" in message and "row=1" in message and "row=2" not in message
    assert "looks_like='ms'" in message
    assert "convert every timestamp to the same unit" in message


def test_click_outside_domain() -> None:
    message = error_for(base(click=[1, 2, 0]))
    assert "column 'click' has 1 value(s) outside {0, 1}" in message
    assert "row=1, user_id=2, item_id=20, click=2" in message
    assert "make 'click' 1 for a positive, 0 for a negative" in message


def test_null_click() -> None:
    message = error_for(base(click=[1, None, 0]))
    assert "column 'click' has 1 null value(s)" in message


def test_purchase_outside_domain() -> None:
    message = error_for(base(purchase=[1, None, -1]))
    assert "column 'purchase' has 1 value(s) outside {0, 1}" in message
    assert "purchase=-1" in message


def test_purchase_without_click() -> None:
    message = error_for(base(purchase=[1, 1, 0]))
    assert "column 'purchase'" in message and "a purchase without a click" in message
    assert "row=1, user_id=2, item_id=20, click=0, purchase=1" in message
    assert "row=0" not in message  # clicked and purchased is fine
    assert "set click = 1 on purchased rows" in message


def test_negative_and_nan_rating() -> None:
    message = error_for(base(rating=[4.0, -1.0, float("nan")]))
    assert "column 'rating' has 2 negative, NaN or infinite value(s)" in message
    assert "rating=-1.0" in message and "rating=nan" in message


def test_rating_outside_declared_scale() -> None:
    data = base(rating=[5.0, 0.5, None], click=[1, 1, 0])
    message = error_for(data, rating_scale=(1, 5))
    assert "column 'rating' has 1 value(s) outside the rating scale [1, 5]" in message
    assert "row=1, user_id=2, item_id=20, rating=0.5" in message and "row=0" not in message
    assert "set features.rating_scale = [lo, hi] to the scale your data uses" in message
    # The bounds are inclusive, nulls are not rated, and no scale means no scale check.
    inclusive = validate_impressions(pl.DataFrame(data), "t", rating_scale=(0.5, 5))
    assert inclusive["rating"].to_list() == [5.0, 0.5, None]
    assert validate_impressions(pl.DataFrame(data), "t")["rating"].to_list() == [5.0, 0.5, None]


def test_declared_scale_may_include_negative_ratings() -> None:
    data = pl.DataFrame(base(rating=[-1.0, 1.0, None]))
    assert validate_impressions(data, "t", rating_scale=(-1, 1))["rating"].to_list() == [
        -1.0, 1.0, None
    ]  # fmt: skip
    message = error_for(base(rating=[-1.0, float("nan"), None]), rating_scale=(-1, 1))
    assert "column 'rating' has 1 NaN or infinite value(s)" in message and "row=1" in message


def test_float32_rating_on_a_fractional_bound_is_inside() -> None:
    data = pl.DataFrame(base(rating=pl.Series([0.1, 0.3, None], dtype=pl.Float32)))
    out = validate_impressions(data, "t", rating_scale=(0.1, 0.3))  # no error
    assert out.height == 3 and out["rating"].null_count() == 1


@pytest.mark.parametrize("scale", [(5, 1), (1, 1), (1, float("inf")), (1,), ("low", "high")])
def test_invalid_rating_scale(scale: Any) -> None:
    message = error_for(base(), rating_scale=scale)
    assert "features.rating_scale must be [lowest, highest]" in message


def test_rating_of_wrong_dtype() -> None:
    message = error_for(base(rating=["good", "bad", None]))
    assert "column 'rating' has dtype String" in message


def test_examples_are_capped_at_three_rows() -> None:
    data = (
        pl.DataFrame(base())
        .vstack(pl.DataFrame(base()))
        .with_columns(pl.lit(None, dtype=pl.Int64).alias("user_id"))
    )
    message = error_for(data)
    assert message.count("row=") == 3


# Rows 0 and 3 repeat (1, 10, T0); row 4 repeats row 2 (the same second in ms).
DUPLICATED = base(
    user_id=[1, 2, 3, 1, 3],
    item_id=[10, 20, 30, 10, 30],
    timestamp=[T0 * 1000, (T0 + 60) * 1000, (T0 + 120) * 1000, T0 * 1000, (T0 + 120) * 1000 + 999],
    click=[1, 0, 1, 0, 1],
    rating=[4.0, None, 3.0, None, 5.0],
)


def test_duplicates_keep_is_the_default() -> None:
    frame = pl.DataFrame(DUPLICATED)
    assert_frame_equal(
        validate_impressions(frame, "t", duplicates="keep"), validate_impressions(frame, "t")
    )
    assert validate_impressions(frame, "t").height == 5


def test_duplicates_drop_keeps_the_first_in_input_order() -> None:
    out = validate_impressions(pl.DataFrame(DUPLICATED), "t", duplicates="drop")
    assert out["user_id"].to_list() == [1, 2, 3]
    assert out["timestamp"].to_list() == [T0, T0 + 60, T0 + 120]
    assert out["click"].to_list() == [1, 0, 1]  # the first copy's labels, not the later ones
    assert out["rating"].to_list() == [4.0, None, 3.0]


def test_duplicates_drop_from_pandas_equals_polars() -> None:
    data = {**DUPLICATED, "purchase": [1, None, 0, None, 1], "device": list("abcde")}
    from_pandas = validate_impressions(pd.DataFrame(data), "t", duplicates="drop")
    from_polars = validate_impressions(pl.DataFrame(data), "t", duplicates="drop")
    assert_frame_equal(from_pandas, from_polars)
    assert from_pandas["device"].to_list() == ["a", "b", "c"]


def test_duplicates_error_shows_both_copies() -> None:
    message = error_for(DUPLICATED, duplicates="error")
    assert "2 row(s) repeat the (user_id, item_id, timestamp) of an earlier row" in message
    assert (
        f"row=0, user_id=1, item_id=10, timestamp={T0}, click=1; "
        f"row=3, user_id=1, item_id=10, timestamp={T0}, click=0; "
        f"row=2, user_id=3, item_id=30, timestamp={T0 + 120}, click=1"
    ) in message
    assert "set features.duplicates = 'drop' to keep the first of each, or 'keep'" in message


def test_no_duplicates_pass_the_error_policy() -> None:
    frame = pl.DataFrame(base())
    assert_frame_equal(
        validate_impressions(frame, "t", duplicates="error"), validate_impressions(frame, "t")
    )


def test_unknown_duplicates_policy() -> None:
    message = error_for(base(), duplicates="first")
    assert "features.duplicates must be one of 'keep', 'drop', 'error', got 'first'" in message


def test_not_a_frame() -> None:
    with pytest.raises(RecsysError, match=r"got builtins\.dict.*Fix:"):
        validate_impressions(base(), "t")


# ------------------------------------------------------------------- side tables


def test_side_table_dtypes() -> None:
    items = pl.DataFrame(
        {
            "item_id": pl.Series([10, 20], dtype=pl.Int32),
            "genres": [["Comedy", "Drama"], []],
            "tags": [[1, 2], [3]],
            "price": [3, 4],
            "on_sale": [True, False],
            "brand": pl.Series(["x", "y"], dtype=pl.Categorical),
            "true_factors": [[0.5, 0.1], [0.2, 0.3]],
        }
    )
    impressions = validate_impressions(pl.DataFrame(base()), "t")
    out = validate_side_table(items, "item_id", "items.parquet", impressions)
    assert out.schema == pl.Schema(
        {
            "item_id": pl.Int64,
            "genres": pl.List(pl.String),
            "tags": pl.List(pl.String),
            "price": pl.Float32,
            "on_sale": pl.Float32,
            "brand": pl.String,
            "true_factors": pl.List(pl.Float64),
        }
    )
    assert out["genres"].to_list() == [["Comedy", "Drama"], []]
    assert out["tags"].to_list() == [["1", "2"], ["3"]]
    assert out["on_sale"].to_list() == [1.0, 0.0]


def test_side_table_list_of_strings_from_pandas() -> None:
    users = pd.DataFrame({"user_id": [1, 2], "langs": [["en", "fr"], ["de"]]})
    out = validate_side_table(users, "user_id", "users", None)
    assert out["langs"].to_list() == [["en", "fr"], ["de"]]


def test_side_table_may_miss_ids() -> None:
    impressions = validate_impressions(pl.DataFrame(base()), "t")
    out = validate_side_table(pl.DataFrame({"user_id": [1]}), "user_id", "u", impressions)
    assert out["user_id"].to_list() == [1]


def side_error(frame: pl.DataFrame, impressions: pl.DataFrame | None = None) -> str:
    with pytest.raises(RecsysError) as info:
        validate_side_table(frame, "item_id", "items.csv", impressions)
    message = str(info.value)
    assert "Fix:" in message and "items.csv" in message
    return message


def test_side_table_duplicate_keys() -> None:
    message = side_error(pl.DataFrame({"item_id": [10, 20, 10], "price": [1.0, 2.0, 3.0]}))
    assert "column 'item_id' must be unique" in message
    assert "row=0, item_id=10, price=1.0; row=2, item_id=10, price=3.0" in message


def test_side_table_missing_key() -> None:
    message = side_error(pl.DataFrame({"ItemID": [10], "price": [1.0]}))
    assert "rename 'ItemID' to 'item_id'" in message


def test_side_table_key_kind_must_match_impressions() -> None:
    impressions = validate_impressions(pl.DataFrame(base()), "t")
    message = side_error(pl.DataFrame({"item_id": ["10"], "price": [1.0]}), impressions)
    assert "column 'item_id' is String here but Int64 in the impressions table" in message


def test_side_table_unsupported_feature_dtype() -> None:
    message = side_error(pl.DataFrame({"item_id": [10], "embedding": [[0.1, 0.2]]}))
    assert "column 'embedding' has dtype List(Float64)" in message


def test_side_table_null_keys() -> None:
    message = side_error(pl.DataFrame({"item_id": [10, None], "price": [1.0, 2.0]}))
    assert "column 'item_id' has 1 null value(s)" in message


def coverage_case() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Impressions of users 7, 1, 7, 9, 2, 8, 6 and a user table with only users 1, 2, 3."""
    impressions = validate_impressions(
        pl.DataFrame(
            {
                "user_id": [7, 1, 7, 9, 2, 8, 6],
                "item_id": [10] * 7,
                "timestamp": [T0 + i for i in range(7)],
                "click": [1] * 7,
            }
        ),
        "t",
    )
    users = validate_side_table(pl.DataFrame({"user_id": [1, 2, 3]}), "user_id", "u", impressions)
    return impressions, users


def test_side_table_missing_users_of_the_impressions() -> None:
    impressions, users = coverage_case()
    with pytest.raises(RecsysError) as info:
        check_side_coverage(impressions, users, "user_id", "users.csv")
    message = str(info.value)
    assert "4 distinct user_id(s) of the impressions (5 impression row(s))" in message
    assert "have no row in the side table, e.g. user_id=7; user_id=9; user_id=8 " in message
    assert "(in users.csv)" in message
    assert (
        "Fix: add rows for them to the side table, or set features.missing_side_rows = "
        "'unknown' to give them unknown features"
    ) in message
    full = pl.DataFrame({"user_id": [1, 2, 6, 7, 8, 9]})
    check_side_coverage(impressions, full, "user_id", "users.csv")  # every user covered


def test_side_table_missing_users_with_unknown_policy() -> None:
    impressions, users = coverage_case()
    assert check_side_coverage(impressions, users, "user_id", "u", policy="unknown") is None


def test_side_coverage_with_string_ids() -> None:
    impressions = validate_impressions(pl.DataFrame(base(item_id=["a", "b", "c"])), "t")
    items = pl.DataFrame({"item_id": ["a", "c"]})
    with pytest.raises(RecsysError, match=r"1 distinct item_id\(s\).*e\.g\. item_id='b'"):
        check_side_coverage(impressions, items, "item_id", "items.csv", policy="error")


def test_side_coverage_invalid_policy() -> None:
    impressions, users = coverage_case()
    with pytest.raises(RecsysError) as info:
        check_side_coverage(impressions, users, "user_id", "u", policy="ignore")
    message = str(info.value)
    assert "features.missing_side_rows must be one of 'error', 'unknown', got 'ignore'" in message
