"""Row ranges of a split written as Parquet shards, read without loading the split.

A split folder holds `part-NNNNN.parquet` shards (see `save_features`), each made of
row groups. `SplitShards` numbers the split's rows 0..rows-1 across the shards in file
order and reads any range of them, touching only the row groups that overlap it: what
out-of-core training (`training.stream`) and a distributed rank's own share
(`training.distributed`) read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_mtl.errors import RecsysError


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: its file, index in that file and global row range."""

    path: Path
    index: int
    start: int
    rows: int

    @property
    def stop(self) -> int:
        return self.start + self.rows


class SplitShards:
    """The row groups of one or more splits' shards (e.g. train then validation), in row
    order."""

    def __init__(self, folders: Path | list[Path]) -> None:
        self.folders = [Path(f) for f in (folders if isinstance(folders, list) else [folders])]
        files = []
        for folder in self.folders:
            found = sorted(folder.glob("*.parquet"))
            if not found:
                raise RecsysError(
                    f"no Parquet shards in '{folder}'",
                    fix="run `recsys-mtl features PIPELINE.toml` (or `recsys-mtl run`) first",
                )
            files += found
        self.files = files
        self.groups: list[RowGroup] = []
        start = 0
        for path in files:
            metadata = pq.ParquetFile(path).metadata
            for index in range(metadata.num_row_groups):
                rows = metadata.row_group(index).num_rows
                if rows:
                    self.groups.append(RowGroup(path, index, start, rows))
                    start += rows
        self.rows = start
        self._starts = np.array([g.start for g in self.groups], dtype=np.int64)

    def read(self, start: int, stop: int, columns: list[str] | None = None) -> pl.DataFrame:
        """Rows [start, stop) as one frame (only the overlapping row groups are read)."""
        if not 0 <= start <= stop <= self.rows:
            raise ValueError(f"row range [{start}, {stop}) outside 0..{self.rows}")
        first = max(int(np.searchsorted(self._starts, start, side="right")) - 1, 0)
        tables = []
        for group in self.groups[first:]:
            if group.start >= stop:
                break
            table = pq.ParquetFile(group.path).read_row_group(group.index, columns=columns)
            lo, hi = max(start - group.start, 0), min(stop, group.stop) - group.start
            tables.append(table.slice(lo, hi - lo))
        if not tables:
            schema = pq.read_schema(self.groups[0].path)
            names = columns if columns is not None else schema.names
            return pl.from_arrow(pa.table({n: pa.array([], schema.field(n).type) for n in names}))
        frame = pl.from_arrow(pa.concat_tables(tables))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def blocks(self, start: int, stop: int) -> list[tuple[int, int]]:
        """[start, stop) cut at row-group boundaries: the units a streamed epoch shuffles."""
        cuts = [start] + [g.start for g in self.groups if start < g.start < stop] + [stop]
        return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pl.DataFrame:
        """Rows by number, in the given order (each overlapping row group read once)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise ValueError(f"row numbers outside 0..{self.rows}")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        group_of = np.searchsorted(self._starts, ordered, side="right") - 1
        tables = []
        for position in np.unique(group_of):
            group = self.groups[int(position)]
            local = ordered[group_of == position] - group.start
            table = pq.ParquetFile(group.path).read_row_group(group.index, columns=columns)
            tables.append(table.take(pa.array(local)))
        if not tables:
            return self.read(0, 0, columns)
        frame = pl.from_arrow(pa.concat_tables(tables))
        assert isinstance(frame, pl.DataFrame)
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        return frame[back]

    def scan(self) -> pl.LazyFrame:
        """All the rows, lazily (for column statistics that need every row)."""
        return pl.scan_parquet(self.files)
