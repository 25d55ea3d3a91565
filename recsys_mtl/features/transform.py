"""The fitted feature transform: id vocabularies and side-feature encodings.

Fitted on training rows only, saved beside the model, and applied unchanged at
evaluation and query time (DESIGN.md, 'Vocabularies').
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recsys_mtl.features.vocab import FIRST, PAD, UNKNOWN, Vocabulary, write_parquet_atomic

SIDES = ("user", "item")


@dataclass
class SideSpec:
    """What the model needs to know about one side (users or items)."""

    key: str  # "user_id" / "item_id"
    id_vocab_size: int
    categorical: dict[str, int] = field(default_factory=dict)  # name -> vocabulary size
    numeric: list[str] = field(default_factory=list)
    lists: dict[str, int] = field(default_factory=dict)  # name -> vocabulary size
    numeric_stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # mean, std
    max_list_length: int = 8


@dataclass
class SideArrays:
    """Encoded side features for N rows: categorical (N, C) int64, numeric (N, F) float32,
    lists name -> (N, L) int64 with 0 as padding."""

    categorical: np.ndarray
    numeric: np.ndarray
    lists: dict[str, np.ndarray]


class SideTransform:
    """Vocabularies and statistics for one side, plus the raw side table for cold ids."""

    def __init__(
        self,
        spec: SideSpec,
        ids: Vocabulary,
        vocabularies: dict[str, Vocabulary],
        table: pl.DataFrame | None,
    ) -> None:
        self.spec = spec
        self.ids = ids
        self.vocabularies = vocabularies
        self.table = table

    @classmethod
    def fit(
        cls,
        key: str,
        train_ids: pl.Series,
        table: pl.DataFrame | None,
        min_count: int,
        max_list_length: int,
    ) -> SideTransform:
        ids = Vocabulary.fit(train_ids, key, min_count)
        spec = SideSpec(key=key, id_vocab_size=ids.size, max_list_length=max_list_length)
        vocabularies: dict[str, Vocabulary] = {}
        if table is not None:
            fit_rows = table.join(pl.DataFrame({key: ids.values}), on=key, how="semi")
            for name, dtype in fit_rows.schema.items():
                if name == key:
                    continue
                column = fit_rows.get_column(name)
                if dtype == pl.String:
                    vocabularies[name] = Vocabulary.fit(column, name)
                    spec.categorical[name] = vocabularies[name].size
                elif isinstance(dtype, pl.List):
                    vocabularies[name] = Vocabulary.fit(column.explode(), name)
                    spec.lists[name] = vocabularies[name].size
                elif dtype.is_numeric():
                    mean = float(column.mean() or 0.0)
                    std = float(column.std() or 1.0) or 1.0
                    spec.numeric.append(name)
                    spec.numeric_stats[name] = (mean, std)
        return cls(spec, ids, vocabularies, table)

    def encode_table(self, rows: pl.DataFrame) -> SideArrays:
        """Encode raw side rows (key plus feature columns; missing columns count as unknown)."""
        n = rows.height
        categorical = np.full((n, len(self.spec.categorical)), UNKNOWN, dtype=np.int64)
        for j, name in enumerate(self.spec.categorical):
            if name in rows.columns:
                categorical[:, j] = self.vocabularies[name].encode(rows[name]).to_numpy()
        numeric = np.zeros((n, len(self.spec.numeric)), dtype=np.float32)
        for j, name in enumerate(self.spec.numeric):
            if name in rows.columns:
                mean, std = self.spec.numeric_stats[name]
                values = rows[name].cast(pl.Float64).fill_null(mean).fill_nan(mean).to_numpy()
                numeric[:, j] = (values - mean) / std
        lists = {}
        for name in self.spec.lists:
            out = np.full((n, self.spec.max_list_length), PAD, dtype=np.int64)
            if name in rows.columns:
                column = rows[name].list.head(self.spec.max_list_length)
                lengths = column.list.len().fill_null(0).to_numpy().astype(np.int64)
                nonempty = column.filter(pl.Series(lengths > 0))
                flat = self.vocabularies[name].encode(nonempty.explode()).to_numpy()
                row_of = np.repeat(np.arange(n), lengths)
                starts = np.cumsum(lengths) - lengths
                position = np.arange(flat.size) - np.repeat(starts, lengths)
                out[row_of, position] = flat
            lists[name] = out
        return SideArrays(categorical, numeric, lists)

    def feature_table(self) -> SideArrays:
        """Encoded features for every vocabulary index 0..size-1.

        Rows 0 (padding) and 1 (unknown) hold unknown categories, zero numerics and
        empty lists; row i >= 2 holds the features of the id with index i.
        """
        keys = pl.DataFrame({self.spec.key: self.ids.values})
        if self.table is not None:
            keys = keys.join(self.table, on=self.spec.key, how="left", maintain_order="left")
        known = self.encode_table(keys)
        n_cat, n_num = known.categorical.shape[1], known.numeric.shape[1]
        return SideArrays(
            np.concatenate([np.full((FIRST, n_cat), UNKNOWN, np.int64), known.categorical]),
            np.concatenate([np.zeros((FIRST, n_num), np.float32), known.numeric]),
            {
                name: np.concatenate([np.full((FIRST, v.shape[1]), PAD, np.int64), v])
                for name, v in known.lists.items()
            },
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ids.save(folder / f"{self.spec.key}.parquet")
        for name, vocab in self.vocabularies.items():
            vocab.save(folder / f"feature.{name}.parquet")
        if self.table is not None:
            write_parquet_atomic(self.table, folder / "table.parquet")
        (folder / "spec.json").write_text(json.dumps(asdict(self.spec), indent=2))

    @classmethod
    def load(cls, folder: Path) -> SideTransform:
        raw = json.loads((folder / "spec.json").read_text())
        raw["numeric_stats"] = {k: tuple(v) for k, v in raw["numeric_stats"].items()}
        spec = SideSpec(**raw)
        ids = Vocabulary.load(folder / f"{spec.key}.parquet", spec.key)
        vocabularies = {
            name: Vocabulary.load(folder / f"feature.{name}.parquet", name)
            for name in [*spec.categorical, *spec.lists]
        }
        table_path = folder / "table.parquet"
        table = pl.read_parquet(table_path) if table_path.exists() else None
        return cls(spec, ids, vocabularies, table)


class FeatureTransform:
    """Both sides' transforms; `users` and `items` are SideTransforms."""

    def __init__(self, users: SideTransform, items: SideTransform) -> None:
        self.users = users
        self.items = items

    def side(self, name: str) -> SideTransform:
        return self.users if name == "user" else self.items

    def encode_pairs(self, frame: pl.DataFrame, where: str = "input") -> pl.DataFrame:
        """Add `user_idx` / `item_idx` (Int32) to a frame with user_id and item_id."""
        return frame.with_columns(
            self.users.ids.encode(frame["user_id"], where).alias("user_idx"),
            self.items.ids.encode(frame["item_id"], where).alias("item_idx"),
        )

    def save(self, folder: Path) -> None:
        self.users.save(folder / "user")
        self.items.save(folder / "item")

    @classmethod
    def load(cls, folder: Path) -> FeatureTransform:
        return cls(SideTransform.load(folder / "user"), SideTransform.load(folder / "item"))


__all__ = ["FIRST", "SIDES", "FeatureTransform", "SideArrays", "SideSpec", "SideTransform"]
