"""Vocabularies: raw ids -> contiguous indices with reserved padding and unknown slots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys_mtl.atomic import atomic_path
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.lookup import KeyPositions

PAD = 0
UNKNOWN = 1
FIRST = 2


class Vocabulary:
    """Maps raw values (Int64 or String) to indices: 0 = padding, 1 = unknown, 2.. = known.

    Fitted on training rows only; values seen fewer than `min_count` times stay unknown.
    Known values are ordered by descending count, ties by value, so indices are stable.
    """

    def __init__(self, values: pl.Series, name: str) -> None:
        self.name = name
        self.values = values.rename("value")
        self._positions = KeyPositions(self.values)

    @classmethod
    def fit(cls, values: pl.Series, name: str, min_count: int = 1) -> Vocabulary:
        counts = (
            values.drop_nulls()
            .rename("value")
            .value_counts(name="count")
            .filter(pl.col("count") >= min_count)
            .sort(["count", "value"], descending=[True, False])
        )
        return cls(counts["value"], name)

    @property
    def size(self) -> int:
        """Number of rows an embedding table needs (known values plus the two reserved)."""
        return len(self.values) + FIRST

    @property
    def dtype(self) -> pl.DataType:
        return self.values.dtype

    def encode(self, values: pl.Series, where: str = "input") -> pl.Series:
        """Raw values (N,) -> Int32 indices (N,); unknown and null values map to 1."""
        rows = self._positions.positions(self.cast(values, where))
        return (rows.cast(pl.Int32) + FIRST).fill_null(UNKNOWN).rename(self.name)

    def decode(self, indices: np.ndarray) -> pl.Series:
        """Indices (N,) -> raw values; reserved slots decode to null."""
        indices = np.asarray(indices, dtype=np.int64)
        known = indices >= FIRST
        if not len(self.values):  # nothing known (e.g. every value under min_count)
            return pl.Series(self.values.name, [None] * len(indices), dtype=self.dtype)
        out = self.values.gather(np.where(known, indices - FIRST, 0))
        return out.set(pl.Series(~known), None) if (~known).any() else out

    def cast(self, values: pl.Series, where: str = "input") -> pl.Series:
        """`values` in the vocabulary's dtype, or a RecsysError naming the mismatch."""
        if values.dtype == self.dtype:
            return values
        if values.dtype.is_float() and self.dtype.is_integer():
            fractional = values.filter(values.is_not_null() & (values != values.floor()))
            if fractional.len():
                raise RecsysError(
                    f"'{self.name}' values such as {fractional.head(3).to_list()} are not whole "
                    f"numbers but the vocabulary holds {self.dtype} ids",
                    where=where,
                    fix=f"pass integer {self.name} values",
                )
        try:
            return values.cast(self.dtype, strict=True)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
            lenient = values.cast(self.dtype, strict=False)
            bad = values.filter(lenient.is_null() & values.is_not_null()).head(3).to_list()
            raise RecsysError(
                f"'{self.name}' values such as {bad} are {values.dtype} but the vocabulary holds "
                f"{self.dtype} ids",
                where=where,
                fix=f"pass {self.name} values of the same type as in training",
            ) from None

    def save(self, path: Path) -> None:
        write_parquet_atomic(pl.DataFrame({"value": self.values}), path)

    @classmethod
    def load(cls, path: Path, name: str) -> Vocabulary:
        return cls(pl.read_parquet(path).get_column("value"), name)


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write Parquet to a temporary file beside `path`, then rename."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
