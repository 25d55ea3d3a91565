"""Loading your own impressions from Parquet/CSV files and from in-memory frames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys_mtl.config import FeaturesSection, ImpressionsSource
from recsys_mtl.data.impressions import dataset_from_frames, load_impressions
from recsys_mtl.errors import RecsysError

T0 = 1_700_000_000
IMPRESSIONS = pl.DataFrame(
    {
        "user_id": ["u1", "u1", "u2", "u3"],
        "item_id": [10, 11, 10, 12],
        "timestamp": [(T0 + 60 * i) * 1000 for i in range(4)],
        "click": [1, 0, 1, 1],
        "purchase": [1, None, 0, None],
        "rating": [5.0, None, None, 3.5],
        "device": ["ios", "web", "ios", "web"],
    }
)
ITEMS = pl.DataFrame({"item_id": [10, 11, 12], "price": [9.5, 3.0, 1.25], "brand": ["a", "b", "a"]})
USERS = pl.DataFrame({"user_id": ["u1", "u2"], "country": ["fr", "de"]})


def write(frame: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_load_files(tmp_path: Path, suffix: str) -> None:
    cfg = ImpressionsSource(
        path=str(write(IMPRESSIONS, tmp_path / f"clicks{suffix}")),
        users_path=str(write(USERS, tmp_path / f"users{suffix}")),
        items_path=str(write(ITEMS, tmp_path / f"items{suffix}")),
        positive_only=True,
    )
    with pytest.raises(RecsysError, match=r"user_id='u3'.*missing_side_rows = 'unknown'"):
        load_impressions(cfg)  # the user table lacks u3
    ds = load_impressions(cfg, features=FeaturesSection(missing_side_rows="unknown"))
    assert ds.name == "clicks" and ds.positive_only
    imp = ds.impressions
    assert imp["timestamp"].to_list() == [T0, T0 + 60, T0 + 120, T0 + 180]  # from milliseconds
    assert imp["purchase"].to_list() == [1, None, 0, None]
    assert imp["rating"].to_list() == [5.0, None, None, 3.5]
    assert imp.schema["user_id"] == pl.String and imp.schema["item_id"] == pl.Int64
    assert ds.items is not None and ds.items["price"].dtype == pl.Float32
    assert ds.users is not None and ds.users["country"].to_list() == ["fr", "de"]


def test_parquet_and_csv_give_the_same_dataset(tmp_path: Path) -> None:
    datasets = []
    for suffix in (".parquet", ".csv"):
        cfg = ImpressionsSource(
            path=str(write(IMPRESSIONS, tmp_path / f"clicks{suffix}")),
            items_path=str(write(ITEMS, tmp_path / f"items{suffix}")),
        )
        datasets.append(load_impressions(cfg))
    parquet, csv = datasets
    assert_frame_equal(parquet.impressions, csv.impressions)
    assert parquet.items is not None and csv.items is not None
    assert_frame_equal(parquet.items, csv.items)


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    write(IMPRESSIONS, tmp_path / "clicks.parquet")
    ds = load_impressions(ImpressionsSource(path="clicks.parquet"), base_dir=tmp_path)
    assert ds.impressions.height == 4 and ds.users is None and ds.items is None


def test_list_of_string_side_columns_survive_parquet(tmp_path: Path) -> None:
    items = pl.DataFrame({"item_id": [10, 11, 12], "tags": [["x", "y"], [], ["z"]]})
    cfg = ImpressionsSource(
        path=str(write(IMPRESSIONS, tmp_path / "clicks.parquet")),
        items_path=str(write(items, tmp_path / "items.parquet")),
    )
    ds = load_impressions(cfg)
    assert ds.items is not None
    assert ds.items.schema["tags"] == pl.List(pl.String)
    assert ds.items["tags"].to_list() == [["x", "y"], [], ["z"]]


def test_validation_errors_name_the_file(tmp_path: Path) -> None:
    bad = IMPRESSIONS.with_columns(pl.lit(1).alias("purchase"), pl.lit(0).alias("click"))
    path = write(bad, tmp_path / "bad.parquet")
    with pytest.raises(RecsysError, match=r"purchase without a click.*bad\.parquet.*Fix:"):
        load_impressions(ImpressionsSource(path=str(path)))


def test_side_table_errors_name_their_file(tmp_path: Path) -> None:
    cfg = ImpressionsSource(
        path=str(write(IMPRESSIONS, tmp_path / "clicks.parquet")),
        items_path=str(write(pl.concat([ITEMS, ITEMS]), tmp_path / "items.csv")),
    )
    with pytest.raises(RecsysError, match=r"'item_id' must be unique.*items\.csv.*Fix:"):
        load_impressions(cfg)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match=r"nope\.parquet' does not exist.*Fix: correct"):
        load_impressions(ImpressionsSource(path=str(tmp_path / "nope.parquet")))


def test_missing_side_file(tmp_path: Path) -> None:
    cfg = ImpressionsSource(
        path=str(write(IMPRESSIONS, tmp_path / "clicks.parquet")),
        users_path=str(tmp_path / "users.parquet"),
    )
    with pytest.raises(RecsysError, match=r"users\.parquet.*users_path.*Fix:"):
        load_impressions(cfg)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "clicks.json"
    path.write_text("{}")
    with pytest.raises(RecsysError, match=r"neither Parquet nor CSV.*Fix: point"):
        load_impressions(ImpressionsSource(path=str(path)))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "clicks.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(RecsysError, match=r"could not read 'clicks\.parquet'.*Fix:"):
        load_impressions(ImpressionsSource(path=str(path)))


def test_empty_path() -> None:
    with pytest.raises(RecsysError, match=r"source\.impressions\.path is empty"):
        load_impressions(ImpressionsSource())


def test_dataset_from_pandas_and_polars_frames_agree() -> None:
    from_polars = dataset_from_frames(IMPRESSIONS, users=USERS, items=ITEMS, positive_only=True)
    from_pandas = dataset_from_frames(
        IMPRESSIONS.to_pandas(), users=USERS.to_pandas(), items=ITEMS.to_pandas(), name="pd"
    )
    assert_frame_equal(from_polars.impressions, from_pandas.impressions)
    assert from_polars.users is not None and from_pandas.users is not None
    assert_frame_equal(from_polars.users, from_pandas.users)
    assert from_polars.items is not None and from_pandas.items is not None
    assert_frame_equal(from_polars.items, from_pandas.items)
    assert from_polars.positive_only and not from_pandas.positive_only
    assert (from_polars.name, from_pandas.name) == ("frames", "pd")


def test_dataset_from_frames_rejects_bad_input() -> None:
    with pytest.raises(RecsysError, match=r"column 'click' has dtype String.*Fix:"):
        dataset_from_frames(pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [3],
                                          "click": ["yes"]}))  # fmt: skip
