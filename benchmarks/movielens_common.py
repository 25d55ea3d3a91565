"""Paths and the reported metrics shared by the MovieLens-100K benchmark scripts."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PIPELINE = ROOT / "pipelines" / "movielens-100k.toml"
METRICS = (
    "test/click_auc",
    "test/purchase_auc",
    "test/purchase_auc_given_click",
    "test/rating_rmse",
    "test/recall@10",
    "test/ndcg@10",
)
