"""The feature stage: split, fit the transform on training rows, sample negatives, write.

Output folder (written under a temporary name, then renamed into place):
  train/, validation/, test/   one row per impression, as part-NNNNN.parquet shards
  transform/                                        vocabularies, side tables, specs
  spec.json                                         the feature spec (counts, split, tasks)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.config import FeatureDecl, FeaturesSection, PipelineConfig, snapshot_seconds
from recsys_mtl.data.dataset import ORACLE_PREFIX, Dataset
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.history import N_SPLITS, RECENT_ITEMS, HistoryTransform
from recsys_mtl.features.negatives import negatives_frame
from recsys_mtl.features.split import SPLIT_NAMES, TRAIN, assign_split
from recsys_mtl.features.state import EventState, visible_at
from recsys_mtl.features.transform import (
    RESERVED,
    SIDES,
    FeatureTransform,
    RowSettings,
    SideTransform,
    check_declared,
    concat_columns,
    fit_columns,
)

LABELS = ("click", "purchase", "rating")

SPLITS = tuple(SPLIT_NAMES.values())


class SplitFrames(Mapping[str, pl.DataFrame]):
    """Split name -> frame, each read from `<folder>/<split>/*.parquet` the first time it
    is asked for (so a stage that streams the training rows never loads them)."""

    def __init__(self, folder: Path, names: tuple[str, ...] = SPLITS) -> None:
        self.folder = folder
        self.names = names
        self._loaded: dict[str, pl.DataFrame] = {}

    def __getitem__(self, name: str) -> pl.DataFrame:
        if name not in self.names:
            raise KeyError(name)
        if name not in self._loaded:
            self._loaded[name] = pl.read_parquet(self.folder / name / "*.parquet")
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def without(self, name: str) -> SplitFrames:
        other = SplitFrames(self.folder, tuple(n for n in self.names if n != name))
        other._loaded = {n: f for n, f in self._loaded.items() if n != name}
        return other


@dataclass
class FeatureSet:
    """Encoded splits plus the fitted transform. Frames hold user_id, item_id, user_idx,
    item_idx, timestamp, click, purchase, rating and any `true_*` oracle columns.
    `folder`: where the splits are saved as Parquet shards (None until saved); loaded
    features read each split from there only when it is first used."""

    splits: Mapping[str, pl.DataFrame]
    transform: FeatureTransform
    spec: dict[str, Any]
    folder: Path | None = None

    @property
    def train(self) -> pl.DataFrame:
        return self.splits["train"]

    @property
    def validation(self) -> pl.DataFrame:
        return self.splits["validation"]

    @property
    def test(self) -> pl.DataFrame:
        if "test" not in self.splits:
            raise RecsysError(
                "the test split was read during training",
                fix="model selection and early stopping use the validation split only; "
                "read the test split in evaluation, after training",
            )
        return self.splits["test"]

    def without_test(self) -> FeatureSet:
        """The same features with the test split withheld (what training may read)."""
        if isinstance(self.splits, SplitFrames):
            return FeatureSet(self.splits.without("test"), self.transform, self.spec, self.folder)
        splits = {name: frame for name, frame in self.splits.items() if name != "test"}
        return FeatureSet(splits, self.transform, self.spec, self.folder)

    def in_memory(self, name: str) -> bool:
        """Whether split `name` is already a frame in memory (not read from disk on use)."""
        return not isinstance(self.splits, SplitFrames) or self.splits.is_loaded(name)

    def columns(self, name: str, columns: list[str]) -> pl.DataFrame:
        """Some columns of split `name`, read from disk alone when it is not loaded."""
        if self.in_memory(name) or self.folder is None:
            return self.splits[name].select(columns)
        return pl.read_parquet(self.folder / name / "*.parquet", columns=columns)

    def column_names(self, name: str) -> list[str]:
        """The columns of split `name` (from the Parquet schema when not loaded)."""
        if self.in_memory(name) or self.folder is None:
            return self.splits[name].columns
        first = sorted((self.folder / name).glob("*.parquet"))[0]
        return list(pl.read_parquet_schema(first))

    def split_folder(self, name: str) -> Path | None:
        """The folder of split `name`'s Parquet shards (None when never saved)."""
        return self.folder / name if self.folder is not None else None


def build_features(dataset: Dataset, config: PipelineConfig) -> FeatureSet:
    """Split, fit every transform on training rows, sample negatives, add leak-free
    history, context and time features; returns the encoded splits."""
    fc = config.features
    impressions = assign_split(
        dataset.impressions,
        fc.split,
        validation_fraction=fc.validation_fraction,
        test_fraction=fc.test_fraction,
        validation_last_n=fc.validation_last_n,
        test_last_n=fc.test_last_n,
        seed=config.pipeline.seed,
    )
    impressions = impressions.with_columns(
        pl.Series(
            "visible_at",
            visible_at(
                impressions,
                fc.freshness,
                fc.snapshot_fraction or fc.test_fraction,
                snapshot_seconds(fc.snapshot_every),
            ),
        )
    )
    train_rows = impressions.filter(pl.col("split") == TRAIN)
    if train_rows.height == 0:
        raise RecsysError(
            "the split left no training rows", where=dataset.name, fix="lower the test fraction"
        )
    item_table, item_decls = dataset.items, fc.item
    if fc.item_popularity:
        item_table, item_decls = with_item_popularity(item_table, train_rows, fc.item)
    users = SideTransform.fit("user_id", train_rows["user_id"], dataset.users, fc.user, fc)
    items = SideTransform.fit("item_id", train_rows["item_id"], item_table, item_decls, fc)
    candidates = [
        c for c in impressions.columns if c not in RESERVED and not c.startswith(ORACLE_PREFIX)
    ]
    check_declared(fc.context, candidates, "context columns of the impressions")
    context, context_vocabularies = fit_columns(
        train_rows, candidates, fc.context, fc, prefix="context_"
    )
    transform = FeatureTransform(
        users,
        items,
        RowSettings(context, list(fc.time), False, fc.recent_items),
        context_vocabularies,
    )
    events = transform.encode_pairs(impressions, dataset.name)
    rows = events.with_columns(pl.lit(False).alias("sampled"))
    if dataset.positive_only:
        negatives = negatives_frame(
            events.select(pl.exclude("item_id", "click", "purchase", "rating")),
            n_items=items.ids.size,
            per_positive=fc.negatives_per_positive,
            seed=config.pipeline.seed,
            sampler=fc.negative_sampler,
            exponent=fc.popularity_exponent,
        )
        negatives = negatives.with_columns(
            items.ids.decode(negatives["item_idx"].to_numpy()).alias("item_id"),
            pl.lit(True).alias("sampled"),
        )
        rows = pl.concat([rows, negatives], how="diagonal_relaxed")
    parts = [rows, transform.context_features(rows)]
    if fc.history or fc.recent_items or fc.recent_ratings or "recency" in fc.time:
        history, history_parts = _history_features(events, rows, dataset.positive_only, fc)
        transform = FeatureTransform(
            users,
            items,
            RowSettings(context, list(fc.time), True, fc.recent_items),
            context_vocabularies,
            history,
        )
        parts += history_parts
    del rows, events
    encoded = concat_columns(parts)
    del parts
    # One sort (a single copy of the wide frame); each split is then a zero-copy slice.
    encoded = encoded.sort("split", "user_idx", "timestamp", "item_idx", maintain_order=True)
    counts = np.bincount(encoded["split"].to_numpy(), minlength=len(SPLIT_NAMES))
    starts = np.concatenate([[0], np.cumsum(counts)])
    splits = {
        name: encoded.slice(int(starts[code]), int(counts[code])).drop("split")
        for code, name in SPLIT_NAMES.items()
    }
    del encoded
    spec = {
        "source": dataset.name,
        "positive_only": dataset.positive_only,
        "split": {
            "kind": fc.split,
            "validation_fraction": fc.validation_fraction,
            "test_fraction": fc.test_fraction,
            "validation_last_n": fc.validation_last_n,
            "test_last_n": fc.test_last_n,
        },
        "negatives": {
            "sampler": fc.negative_sampler if dataset.positive_only else "none (real negatives)",
            "per_positive": fc.negatives_per_positive if dataset.positive_only else 0,
            "popularity_exponent": fc.popularity_exponent,
        },
        "rows": {name: frame.height for name, frame in splits.items()},
        "positives": {name: int(frame["click"].sum()) for name, frame in splits.items()},
        "user": asdict(transform.users.spec),
        "item": asdict(transform.items.spec),
        "tasks": {name: asdict(task) for name, task in config.tasks.items()},
    }
    return FeatureSet(splits, transform, spec)


POPULARITY = "popularity"


def with_item_popularity(
    items: pl.DataFrame | None, train_rows: pl.DataFrame, declared: dict[str, FeatureDecl]
) -> tuple[pl.DataFrame, dict[str, FeatureDecl]]:
    """The item table with `popularity` (each item's clicks among `train_rows`, 0 for
    none) and its declaration (quantile buckets by default)."""
    if items is not None and POPULARITY in items.columns:
        raise RecsysError(
            f"features.item_popularity adds an item column '{POPULARITY}', and the item "
            "table already has one",
            where="features.item_popularity",
            fix=f"rename the item table's '{POPULARITY}' column or turn item_popularity off",
        )
    clicks = (
        train_rows.filter(pl.col("click") == 1)
        .group_by("item_id")
        .agg(pl.len().cast(pl.Float64).alias(POPULARITY))
    )
    # the item table's own rows (an item missing from it stays missing), or every
    # training item where there is no table
    rows = items if items is not None else train_rows.select("item_id").unique()
    table = rows.join(clicks, on="item_id", how="left").with_columns(
        pl.col(POPULARITY).fill_null(0.0)
    )
    decl = declared.get(POPULARITY) or FeatureDecl(kind="numeric", transform="quantile", buckets=10)
    return table, {**declared, POPULARITY: decl}


def _history_features(
    events: pl.DataFrame, rows: pl.DataFrame, positive_only: bool, fc: FeaturesSection
) -> tuple[HistoryTransform, list[pl.DataFrame]]:
    """History aggregates, recency and recent items of every row of `rows`, read as of
    the row's time from the events of its own split and the earlier ones (test rows:
    every event, as the exported bundle reads them)."""
    events = events.select(
        "user_id", "item_id", "item_idx", "timestamp", "visible_at", "split", *LABELS
    )
    history = HistoryTransform.fit(
        events.filter(pl.col("split") == TRAIN),
        events.drop("split"),
        positive_only=positive_only,
        aggregates=fc.history,
        prior=fc.history_prior,
        n_recent=fc.recent_items,
        recency="recency" in fc.time,
        n_recent_ratings=fc.recent_ratings,
        item_features=fc.item_history,
        freshness=fc.freshness,
    )
    split = rows["split"].to_numpy()
    times = rows["timestamp"].cast(pl.Int64).to_numpy()
    raw: dict[str, list[pl.DataFrame]] = {side: [] for side in SIDES}
    recent_parts: list[np.ndarray] = []
    order_parts: list[np.ndarray] = []
    for level in range(N_SPLITS):
        at_level = np.flatnonzero(split == level)
        if at_level.size == 0:
            continue
        visible = events.filter(pl.col("split") <= level)
        order_parts.append(at_level)
        level_rows = rows[at_level]
        for side in SIDES:
            if side == "item" and not history.columns("item"):
                continue
            state = EventState(visible, f"{side}_id")
            values, recent = history.read(state, level_rows[f"{side}_id"], side, times[at_level])
            raw[side].append(values)
            if recent is not None:
                recent_parts.append(recent)
        del visible
    inverse = np.empty(rows.height, dtype=np.int64)
    inverse[np.concatenate(order_parts)] = np.arange(rows.height)
    timestamp = rows["timestamp"]
    train = rows["split"] == TRAIN
    raw_rows = {
        side: pl.concat(parts)[inverse].with_columns(timestamp)
        for side, parts in raw.items()
        if parts
    }
    history.fit_scalers(
        raw_rows["user"].filter(train),
        raw_rows["item"].filter(train) if "item" in raw_rows else None,
    )
    parts = [
        history.features(raw_rows[side], side, pl.col("timestamp"))
        for side in SIDES
        if history.columns(side)
    ]
    del raw, raw_rows
    if fc.recent_items:
        recent = np.concatenate(recent_parts)[inverse]
        parts.append(
            pl.DataFrame(
                {RECENT_ITEMS: pl.Series(recent, dtype=pl.Array(pl.Int32, fc.recent_items))}
            )
        )
    return history, parts


def save_features(
    features: FeatureSet,
    folder: Path,
    shard_rows: int = 2_000_000,
    row_group_rows: int = 65_536,
) -> None:
    """Write the feature set into `folder` (each split as `<split>/part-NNNNN.parquet`
    shards of at most `shard_rows` rows, in row groups of `row_group_rows`), replacing
    it only once everything is written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, frame in features.splits.items():
            (tmp / name).mkdir()
            for shard, start in enumerate(range(0, max(frame.height, 1), shard_rows)):
                frame.slice(start, shard_rows).write_parquet(
                    tmp / name / f"part-{shard:05d}.parquet", row_group_size=row_group_rows
                )
        features.transform.save(tmp / "transform")
        (tmp / "spec.json").write_text(json.dumps(features.spec, indent=2))
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new: Path, target: Path) -> None:
    """Swap `new` into `target`: the old folder survives until the new one is in place."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def load_features(folder: Path) -> FeatureSet:
    if not (folder / "spec.json").is_file():
        raise RecsysError(
            f"no features in '{folder}'",
            fix="run `recsys-mtl features PIPELINE.toml` (or `recsys-mtl run`) first",
        )
    spec = json.loads((folder / "spec.json").read_text())
    transform = FeatureTransform.load(folder / "transform")
    return FeatureSet(SplitFrames(folder), transform, spec, folder)
