"""The fitted feature transform: vocabularies, side features, context, time and history.

Fitted on training rows only, saved beside the model, and applied unchanged at
evaluation and query time (DESIGN.md, 'Vocabularies').

Each side (users, items) has two kinds of input:
  table features   one value per id (user/item side tables), buffered in the model
  row features     one value per impression: context columns and time of day (user
                   side), history aggregates and recency (both sides), recent items
                   (user side). In the feature frames they are encoded columns; at
                   query time they come from the serving state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recsys_mtl.config import FeatureDecl, FeaturesSection
from recsys_mtl.data.dataset import ORACLE_PREFIX
from recsys_mtl.features.columns import (
    EMBEDDED_KINDS,
    ColumnSpec,
    encode_column,
    fit_column,
    infer_decl,
)
from recsys_mtl.features.history import RECENT_ITEMS, HistoryTransform
from recsys_mtl.features.state import LATEST, read_times
from recsys_mtl.features.temporal import HOURS, WEEKDAYS, hour_index, weekday_index
from recsys_mtl.features.vocab import FIRST, PAD, UNKNOWN, Vocabulary, write_parquet_atomic

SIDES = ("user", "item")
#: Impression columns that are never context features.
RESERVED = (
    "user_id", "item_id", "timestamp", "click", "purchase", "rating", "split",
    "user_idx", "item_idx", "sampled", "visible_at",
)  # fmt: skip


@dataclass
class SideSpec:
    """What the model needs to know about one side (users or items)."""

    key: str  # "user_id" / "item_id"
    id_vocab_size: int
    table: list[ColumnSpec] = field(default_factory=list)
    rows: list[ColumnSpec] = field(default_factory=list)
    # rows of the id embedding: indices >= id_rows (known ids seen fewer than
    # features.id_min_count times; the vocabulary orders ids by count) read the unknown row
    id_rows: int | None = None

    @property
    def id_embedding_rows(self) -> int:
        return self.id_vocab_size if self.id_rows is None else self.id_rows

    def _named(self, kinds: tuple[str, ...]) -> list[ColumnSpec]:
        return [c for c in [*self.table, *self.rows] if c.kind in kinds]

    @property
    def categorical(self) -> dict[str, int]:
        """Embedded single-valued inputs (table first, then row), name -> rows."""
        return {c.name: c.size for c in self._named(EMBEDDED_KINDS)}

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self._named(("numeric",))]

    @property
    def lists(self) -> dict[str, int]:
        return {c.name: c.size for c in self._named(("list",))}

    @classmethod
    def from_dict(cls, raw: dict) -> SideSpec:
        return cls(
            key=raw["key"],
            id_vocab_size=raw["id_vocab_size"],
            table=[ColumnSpec(**c) for c in raw["table"]],
            rows=[ColumnSpec(**c) for c in raw["rows"]],
            id_rows=raw.get("id_rows"),
        )


@dataclass
class SideArrays:
    """Encoded features for N rows: categorical (N, C) int64, numeric (N, F) float32,
    lists name -> (N, L) int64 with 0 as padding."""

    categorical: np.ndarray
    numeric: np.ndarray
    lists: dict[str, np.ndarray]


def encode_columns(
    columns: list[ColumnSpec], vocabularies: dict[str, Vocabulary], frame: pl.DataFrame
) -> SideArrays:
    """Encode `frame`'s raw `source` columns (missing columns count as unknown)."""
    n = frame.height
    cat, num, lists = [], [], {}
    for spec in columns:
        present = spec.source in frame.columns
        if spec.kind in EMBEDDED_KINDS:
            cat.append(
                encode_column(spec, vocabularies.get(spec.name), frame[spec.source])
                if present
                else np.full(n, UNKNOWN, np.int64)
            )
        elif spec.kind == "numeric":
            num.append(
                encode_column(spec, None, frame[spec.source])
                if present
                else np.zeros(n, np.float32)
            )
        else:
            lists[spec.name] = (
                encode_column(spec, vocabularies.get(spec.name), frame[spec.source])
                if present
                else np.full((n, spec.max_length), PAD, np.int64)
            )
    return SideArrays(
        np.stack(cat, 1) if cat else np.zeros((n, 0), np.int64),
        np.stack(num, 1) if num else np.zeros((n, 0), np.float32),
        lists,
    )


def fit_columns(
    frame: pl.DataFrame,
    candidates: list[str],
    declared: dict[str, FeatureDecl],
    cfg: FeaturesSection,
    prefix: str = "",
) -> tuple[list[ColumnSpec], dict[str, Vocabulary]]:
    """Fit declared columns and (with cfg.infer) inferred ones among `candidates`."""
    specs, vocabularies = [], {}
    for source in candidates:
        decl = declared.get(source) or (infer_decl(frame.schema[source]) if cfg.infer else None)
        if decl is None or decl.kind == "drop":
            continue
        spec, vocab = fit_column(
            f"{prefix}{source}", source, frame[source], decl, cfg.min_count, cfg.max_list_length
        )
        specs.append(spec)
        if vocab is not None:
            vocabularies[spec.name] = vocab
    return specs, vocabularies


def check_declared(declared: dict[str, FeatureDecl], present: list[str], where: str) -> None:
    from recsys_mtl.errors import RecsysError

    missing = [name for name in declared if name not in present]
    if missing:
        raise RecsysError(
            f"declared feature(s) {missing} are not columns of the {where}",
            where=f"[features.{where.split()[0]}]",
            fix=f"declare columns that exist: {present}",
        )


def concat_columns(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Horizontal concatenation that skips frames without columns."""
    parts = [p for p in parts if p.width]
    return pl.concat(parts, how="horizontal") if parts else pl.DataFrame()


def load_vocabularies(folder: Path) -> dict[str, Vocabulary]:
    """Every `feature.<name>.parquet` vocabulary in `folder`, by name."""
    out = {}
    for path in sorted(folder.glob("feature.*.parquet")):
        name = path.name.removeprefix("feature.").removesuffix(".parquet")
        out[name] = Vocabulary.load(path, name)
    return out


class SideTransform:
    """Id vocabulary and table features of one side, plus the raw side table for cold
    ids (an id unknown to the vocabulary but present in the table gets its features)."""

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
        declared: dict[str, FeatureDecl],
        cfg: FeaturesSection,
    ) -> SideTransform:
        ids = Vocabulary.fit(train_ids, key, cfg.min_count)
        spec = SideSpec(key=key, id_vocab_size=ids.size)
        if cfg.id_min_count > cfg.min_count:
            seen = train_ids.drop_nulls().value_counts(name="count")["count"]
            spec.id_rows = FIRST + int((seen >= cfg.id_min_count).sum())
        vocabularies: dict[str, Vocabulary] = {}
        if table is not None:
            features = [c for c in table.columns if c != key and not c.startswith(ORACLE_PREFIX)]
            check_declared(declared, features, f"{key.split('_')[0]} table")
            fit_rows = table.join(pl.DataFrame({key: ids.values}), on=key, how="semi")
            spec.table, vocabularies = fit_columns(fit_rows, features, declared, cfg)
            table = table.select(key, *[c.source for c in spec.table])
        elif declared:
            check_declared(declared, [], f"{key.split('_')[0]} table (there is none)")
        return cls(spec, ids, vocabularies, table)

    def encode_table(self, rows: pl.DataFrame) -> SideArrays:
        """Encode raw side rows (key plus feature columns; missing columns count as unknown)."""
        return encode_columns(self.spec.table, self.vocabularies, rows)

    def feature_table(self) -> SideArrays:
        """Encoded table features for every vocabulary index 0..size-1.

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
        spec = SideSpec.from_dict(json.loads((folder / "spec.json").read_text()))
        ids = Vocabulary.load(folder / f"{spec.key}.parquet", spec.key)
        vocabularies = load_vocabularies(folder)
        table_path = folder / "table.parquet"
        table = pl.read_parquet(table_path) if table_path.exists() else None
        return cls(spec, ids, vocabularies, table)


@dataclass
class RowSettings:
    """Which row features exist (saved as JSON)."""

    context: list[ColumnSpec] = field(default_factory=list)
    time: list[str] = field(default_factory=list)  # subset of hour, weekday, recency
    history: bool = False
    recent_items: int = 0


class FeatureTransform:
    """Everything fitted: `users`, `items` (SideTransforms), context vocabularies, and
    the history transform with its serving state."""

    def __init__(
        self,
        users: SideTransform,
        items: SideTransform,
        settings: RowSettings | None = None,
        context_vocabularies: dict[str, Vocabulary] | None = None,
        history: HistoryTransform | None = None,
    ) -> None:
        self.users = users
        self.items = items
        self.settings = settings or RowSettings()
        self.context_vocabularies = context_vocabularies or {}
        self.history = history
        self.users.spec.rows = self.user_row_columns()
        self.items.spec.rows = self.item_row_columns()

    def side(self, name: str) -> SideTransform:
        return self.users if name == "user" else self.items

    # ------------------------------------------------------------------ row features

    def user_row_columns(self) -> list[ColumnSpec]:
        s = self.settings
        out = list(s.context)
        if "hour" in s.time:
            out.append(ColumnSpec("hour", "categorical", size=FIRST + HOURS))
        if "weekday" in s.time:
            out.append(ColumnSpec("weekday", "categorical", size=FIRST + WEEKDAYS))
        if self.history is not None:
            out += self.history.columns("user")
        if s.recent_items:
            out.append(
                ColumnSpec(
                    RECENT_ITEMS, "list", size=self.items.ids.size, max_length=s.recent_items
                )
            )
        return out

    def item_row_columns(self) -> list[ColumnSpec]:
        return self.history.columns("item") if self.history is not None else []

    def context_features(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Encoded context and time-of-day columns of impression rows (timestamp
        required for time features; absent context columns count as unknown)."""
        arrays = encode_columns(self.settings.context, self.context_vocabularies, frame)
        columns = {
            spec.name: pl.Series(arrays.categorical[:, j].astype(np.int32))
            for j, spec in enumerate(c for c in self.settings.context if c.kind in EMBEDDED_KINDS)
        }
        columns |= {
            spec.name: pl.Series(arrays.numeric[:, j])
            for j, spec in enumerate(c for c in self.settings.context if c.kind == "numeric")
        }
        columns |= {
            name: pl.Series(values.astype(np.int32), dtype=pl.Array(pl.Int32, values.shape[1]))
            for name, values in arrays.lists.items()
        }
        time = [
            expr
            for name, expr in (
                ("hour", hour_index(pl.col("timestamp")).alias("hour")),
                ("weekday", weekday_index(pl.col("timestamp")).alias("weekday")),
            )
            if name in self.settings.time
        ]
        return frame.select(time).with_columns(**columns)

    def serving_rows(self, frame: pl.DataFrame, side: str) -> pl.DataFrame:
        """Row features of `side` for query rows (user_id / item_id, optional timestamp
        and context columns), read from the serving state as of each row's timestamp
        (a row without one reads the latest state, at the state's reference time)."""
        key = f"{side}_id"
        reference = self.history.spec.reference_time if self.history is not None else 0
        times = read_times(frame)
        if times is None:
            frame = frame.with_columns(pl.lit(reference, pl.Int64).alias("timestamp"))
        else:  # recency and time of day of an undated row: at the reference time
            dated = np.where(times == LATEST, reference, times)
            frame = frame.with_columns(pl.Series("timestamp", dated, dtype=pl.Int64))
        parts = [self.context_features(frame)] if side == "user" else []
        wanted = self.history is not None and (
            self.history.columns(side) or (side == "user" and self.settings.recent_items)
        )
        if self.history is not None and wanted:
            raw, recent = self.history.serving_read(frame[key], side, times)
            if self.history.columns(side):
                raw = raw.with_columns(frame["timestamp"].alias("timestamp"))
                parts.append(self.history.features(raw, side, pl.col("timestamp")))
            if side == "user" and self.settings.recent_items:
                assert recent is not None
                parts.append(
                    pl.DataFrame(
                        {RECENT_ITEMS: pl.Series(recent, dtype=pl.Array(pl.Int32, recent.shape[1]))}
                    )
                )
        return concat_columns(parts)

    def encode_pairs(self, frame: pl.DataFrame, where: str = "input") -> pl.DataFrame:
        """Add `user_idx` / `item_idx` (Int32) to a frame with user_id and item_id."""
        return frame.with_columns(
            self.users.ids.encode(frame["user_id"], where).alias("user_idx"),
            self.items.ids.encode(frame["item_id"], where).alias("item_idx"),
        )

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        self.users.save(folder / "user")
        self.items.save(folder / "item")
        (folder / "context").mkdir(parents=True, exist_ok=True)
        for name, vocab in self.context_vocabularies.items():
            vocab.save(folder / "context" / f"feature.{name}.parquet")
        (folder / "rows.json").write_text(json.dumps(asdict(self.settings), indent=2))
        if self.history is not None:
            self.history.save(folder / "history")

    @classmethod
    def load(cls, folder: Path) -> FeatureTransform:
        raw = json.loads((folder / "rows.json").read_text())
        settings = RowSettings(
            context=[ColumnSpec(**c) for c in raw["context"]],
            time=raw["time"],
            history=raw["history"],
            recent_items=raw["recent_items"],
        )
        vocabularies = load_vocabularies(folder / "context")
        history = HistoryTransform.load(folder / "history") if settings.history else None
        return cls(
            SideTransform.load(folder / "user"),
            SideTransform.load(folder / "item"),
            settings,
            vocabularies,
            history,
        )


__all__ = [
    "FIRST",
    "RESERVED",
    "SIDES",
    "FeatureTransform",
    "RowSettings",
    "SideArrays",
    "SideSpec",
    "SideTransform",
]
