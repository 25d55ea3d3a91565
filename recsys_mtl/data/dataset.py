"""The canonical in-memory form of a data source (see DESIGN.md, 'Impressions table')."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

#: Columns every impressions table has after loading, with their canonical dtypes.
#: `user_id`/`item_id` may be Int64 or String; `purchase` and `rating` may be null.
IMPRESSION_COLUMNS: dict[str, pl.DataType] = {
    "timestamp": pl.Int64(),
    "click": pl.Int8(),
    "purchase": pl.Int8(),
    "rating": pl.Float32(),
}
ID_COLUMNS = ("user_id", "item_id")
#: Columns with this prefix carry the synthetic oracle's truth; never used as features.
ORACLE_PREFIX = "true_"


@dataclass
class Dataset:
    """Impressions plus optional side tables, as produced by every data source.

    impressions: one row per user-item exposure: user_id, item_id, timestamp (Int64
        seconds), click (Int8 0/1), purchase (Int8 0/1 or null), rating (Float32 or
        null), optional context columns and `true_*` oracle columns.
    users / items: `user_id` / `item_id` plus feature columns (string, numeric or
        list of strings), or None.
    positive_only: True when the log holds positives only and the feature pipeline
        must sample negatives.
    name: a short label for reports ("synthetic", "movielens-100k", a file name).
    """

    impressions: pl.DataFrame
    users: pl.DataFrame | None = None
    items: pl.DataFrame | None = None
    positive_only: bool = False
    name: str = "dataset"

    @property
    def oracle_columns(self) -> list[str]:
        return [c for c in self.impressions.columns if c.startswith(ORACLE_PREFIX)]
