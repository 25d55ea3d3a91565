"""The planted-structure check shared by the contract tests: a small synthetic pipeline
trained on one thread must come near the oracle that generated the data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from recsys_mtl.config import PipelineConfig, config_from_dict
from recsys_mtl.features.pipeline import FeatureSet
from recsys_mtl.pipeline import evaluate_stage, train_stage


def contract_params(names: list[str], keep: tuple[str, ...]) -> list[Any]:
    """Parameters of a planted-structure contract test over every plug-in: the `keep`
    ones run in `make test`, the rest are marked `heavy` (`make test-all` runs them).
    The defaults (hard sharing, static weights) are checked in `make test` by
    test_model.py::test_model_recovers_planted_structure."""
    return [n if n in keep else pytest.param(n, marks=pytest.mark.heavy) for n in names]


def planted_config(
    output_dir: Path, model: dict[str, Any], training: dict[str, Any]
) -> PipelineConfig:
    """300 users, 80 items, 150 impressions each; seed 42; 16-dim model."""
    return config_from_dict(
        {
            "pipeline": {"output_dir": str(output_dir), "seed": 42},
            "source": {"synthetic": {"n_users": 300, "n_items": 80, "impressions_per_user": 150}},
            "model": {"embedding_dim": 16, "hidden_dims": [32], "output_dim": 16, **model},
            "training": {
                "batch_size": 512,
                "learning_rate": 0.01,
                "progress": False,
                "relation_every": 10,
                **training,
            },
            "evaluation": {"k": [10], "baselines": ["popularity"], "bootstrap": 0},
            "tracking": {"enabled": False},
        }
    )


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Inside: torch runs on one thread (tests may run beside each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_on_one_thread(
    config: PipelineConfig, features: FeatureSet
) -> tuple[Any, dict[str, float]]:
    """(training result, test metrics), trained with one torch thread."""
    with one_torch_thread():
        recommender, result = train_stage(config, features)
        metrics = evaluate_stage(config, recommender, features)
    return result, metrics


def assert_near_the_oracle(metrics: dict[str, float], features: FeatureSet) -> None:
    """Click and purchase AUC near the oracle's, rating RMSE well under the training-mean
    predictor's, Recall@10 above popularity."""
    assert metrics["oracle/click_auc"] - metrics["test/click_auc"] < 0.07, metrics
    assert metrics["oracle/purchase_auc"] - metrics["test/purchase_auc"] < 0.08, metrics
    train_mean = features.train["rating"].mean()
    rated = features.test.filter(pl.col("rating").is_not_null())["rating"].to_numpy()
    baseline_rmse = float(np.sqrt(np.mean((rated - train_mean) ** 2)))
    assert metrics["test/rating_rmse"] < 0.92 * baseline_rmse, metrics
    assert metrics["test/recall@10"] > metrics["popularity/recall@10"], metrics
