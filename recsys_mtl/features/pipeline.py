"""The feature stage: split, fit the transform on training rows, sample negatives, write.

Output folder (written under a temporary name, then renamed into place):
  train.parquet, validation.parquet, test.parquet   one row per impression
  transform/                                        vocabularies, side tables, specs
  spec.json                                         the feature spec (counts, split, tasks)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys_mtl.config import PipelineConfig
from recsys_mtl.data.dataset import Dataset
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.negatives import negatives_frame
from recsys_mtl.features.split import SPLIT_NAMES, TRAIN, temporal_split
from recsys_mtl.features.transform import FeatureTransform, SideTransform

SPLITS = tuple(SPLIT_NAMES.values())


@dataclass
class FeatureSet:
    """Encoded splits plus the fitted transform. Frames hold user_id, item_id, user_idx,
    item_idx, timestamp, click, purchase, rating and any `true_*` oracle columns."""

    splits: dict[str, pl.DataFrame]
    transform: FeatureTransform
    spec: dict[str, Any]

    @property
    def train(self) -> pl.DataFrame:
        return self.splits["train"]

    @property
    def validation(self) -> pl.DataFrame:
        return self.splits["validation"]

    @property
    def test(self) -> pl.DataFrame:
        return self.splits["test"]


def build_features(dataset: Dataset, config: PipelineConfig) -> FeatureSet:
    """Split per user in time, fit vocabularies on train rows, encode, sample negatives."""
    fc = config.features
    impressions = temporal_split(dataset.impressions, fc.validation_fraction, fc.test_fraction)
    train_rows = impressions.filter(pl.col("split") == TRAIN)
    if train_rows.height == 0:
        raise RecsysError(
            "the split left no training rows", where=dataset.name, fix="lower the test fraction"
        )
    transform = FeatureTransform(
        SideTransform.fit(
            "user_id", train_rows["user_id"], dataset.users, fc.min_count, fc.max_list_length
        ),
        SideTransform.fit(
            "item_id", train_rows["item_id"], dataset.items, fc.min_count, fc.max_list_length
        ),
    )
    encoded = transform.encode_pairs(impressions, dataset.name)
    if dataset.positive_only:
        negatives = negatives_frame(
            encoded.select("user_id", "user_idx", "item_idx", "timestamp", "split"),
            n_items=transform.items.ids.size,
            per_positive=fc.negatives_per_positive,
            seed=config.pipeline.seed,
        )
        negatives = negatives.with_columns(
            transform.items.ids.decode(negatives["item_idx"].to_numpy()).alias("item_id")
        )
        encoded = pl.concat([encoded, negatives], how="diagonal_relaxed")
    encoded = encoded.sort(["user_idx", "timestamp", "item_idx"])
    splits = {
        name: encoded.filter(pl.col("split") == code).drop("split")
        for code, name in SPLIT_NAMES.items()
    }
    spec = {
        "source": dataset.name,
        "positive_only": dataset.positive_only,
        "split": {
            "kind": "per_user_temporal",
            "validation_fraction": fc.validation_fraction,
            "test_fraction": fc.test_fraction,
        },
        "negatives_per_positive": fc.negatives_per_positive if dataset.positive_only else 0,
        "rows": {name: frame.height for name, frame in splits.items()},
        "positives": {name: int(frame["click"].sum()) for name, frame in splits.items()},
        "user": asdict(transform.users.spec),
        "item": asdict(transform.items.spec),
        "tasks": {name: asdict(task) for name, task in config.tasks.items()},
    }
    return FeatureSet(splits, transform, spec)


def save_features(features: FeatureSet, folder: Path) -> None:
    """Write the feature set into `folder`, replacing it only once everything is written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, frame in features.splits.items():
            frame.write_parquet(tmp / f"{name}.parquet")
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
    splits = {name: pl.read_parquet(folder / f"{name}.parquet") for name in SPLITS}
    spec = json.loads((folder / "spec.json").read_text())
    return FeatureSet(splits, FeatureTransform.load(folder / "transform"), spec)
