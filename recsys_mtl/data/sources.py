"""Data sources by name: each turns a config into a `Dataset`."""

from __future__ import annotations

from collections.abc import Callable

from recsys_mtl.config import PipelineConfig
from recsys_mtl.data.dataset import Dataset


def _synthetic(config: PipelineConfig) -> Dataset:
    from recsys_mtl.data.synthetic import generate_synthetic

    return generate_synthetic(config.source.synthetic, config.pipeline.seed)


def _movielens(config: PipelineConfig) -> Dataset:
    from recsys_mtl.data.movielens import load_movielens

    return load_movielens(config.source.movielens, config.pipeline.seed)


def _impressions(config: PipelineConfig) -> Dataset:
    from recsys_mtl.data.impressions import load_impressions

    return load_impressions(config.source.impressions, features=config.features)


SOURCES: dict[str, Callable[[PipelineConfig], Dataset]] = {
    "synthetic": _synthetic,
    "movielens": _movielens,
    "impressions": _impressions,
}


def load_dataset(config: PipelineConfig) -> Dataset:
    return SOURCES[config.source.kind](config)
