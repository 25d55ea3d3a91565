"""Your own impressions: Parquet/CSV files (pipelines) or in-memory frames (Python API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from recsys_mtl.config import FeaturesSection, ImpressionsSource
from recsys_mtl.data.dataset import Dataset
from recsys_mtl.data.schema import (
    check_side_coverage,
    validate_impressions,
    validate_side_table,
)
from recsys_mtl.errors import RecsysError

_READERS = {".parquet": pl.read_parquet, ".pq": pl.read_parquet, ".csv": pl.read_csv}


def read_table(path: str | Path, setting: str = "source.impressions.path") -> pl.DataFrame:
    """Read a Parquet or CSV file (by extension) or a folder of Parquet shards, turning
    failures into RecsysErrors."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        if not shards:
            raise RecsysError(
                f"folder '{path}' holds no .parquet files",
                where=setting,
                fix="point it at a Parquet/CSV file or a folder of Parquet shards",
            )
        path_or_shards: Any = shards
        try:
            return pl.read_parquet(path_or_shards)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise RecsysError(
                f"could not read the Parquet shards in '{path}': {exc}",
                where=setting,
                fix="check that every shard is complete and has the same columns",
            ) from None
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise RecsysError(
            f"'{path.name}' is neither Parquet nor CSV",
            where=str(path),
            fix=f"point {setting} at a .parquet or .csv file",
        )
    if not path.is_file():
        raise RecsysError(
            f"file '{path}' does not exist",
            where=setting,
            fix=f"correct {setting} (relative paths start at the pipeline's project root)",
        )
    try:
        if reader is pl.read_csv:
            return pl.read_csv(path, infer_schema_length=10_000)
        return reader(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecsysError(
            f"could not read '{path.name}': {reason}",
            where=str(path),
            fix="check that the file is complete and really is "
            + ("CSV with a header row" if reader is pl.read_csv else "Parquet"),
        ) from None


def load_impressions(
    cfg: ImpressionsSource, base_dir: Path | None = None, features: FeaturesSection | None = None
) -> Dataset:
    """Load and validate `cfg.path` plus the optional user and item tables, applying the
    input policies of `features` (duplicates, rating scale, side-table coverage).

    Relative paths are resolved against `base_dir` when given.
    """
    features = features or FeaturesSection()
    if not cfg.path:
        raise RecsysError(
            "source.impressions.path is empty",
            fix="set it to your impressions file, e.g. path = 'data/raw/impressions.parquet'",
        )

    def resolve(value: str) -> Path:
        path = Path(value)
        return base_dir / path if base_dir is not None and not path.is_absolute() else path

    path = resolve(cfg.path)
    impressions = validate_impressions(
        read_table(path),
        str(path),
        duplicates=features.duplicates,
        rating_scale=tuple(features.rating_scale) or None,  # type: ignore[arg-type]
    )
    sides: dict[str, pl.DataFrame | None] = {}
    for key, value, setting in (
        ("user_id", cfg.users_path, "source.impressions.users_path"),
        ("item_id", cfg.items_path, "source.impressions.items_path"),
    ):
        side = resolve(value) if value else None
        sides[key] = None
        if side is not None:
            table = validate_side_table(read_table(side, setting), key, str(side), impressions)
            check_side_coverage(
                impressions, table, key, str(side), policy=features.missing_side_rows
            )
            sides[key] = table
    return Dataset(
        impressions=impressions,
        users=sides["user_id"],
        items=sides["item_id"],
        positive_only=cfg.positive_only,
        name=path.stem,
    )


def dataset_from_frames(
    impressions: Any,
    users: Any = None,
    items: Any = None,
    positive_only: bool = False,
    name: str = "frames",
) -> Dataset:
    """Build a validated Dataset from pandas or polars frames (the Python API)."""
    table = validate_impressions(impressions, "impressions")
    return Dataset(
        impressions=table,
        users=None if users is None else validate_side_table(users, "user_id", "users", table),
        items=None if items is None else validate_side_table(items, "item_id", "items", table),
        positive_only=positive_only,
        name=name,
    )
