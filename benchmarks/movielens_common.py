"""Paths and the reported metrics shared by the MovieLens-100K benchmark scripts."""

from __future__ import annotations

import argparse
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


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """--seeds, --set (config overrides for every run) and --name (results file stem)."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        help="extra config overrides for every run, e.g. training.epochs=5",
    )
    parser.add_argument("--name", default=name, help="results file name, without suffix")


def reproduce_line(script: str, overrides: list[str]) -> str:
    """The markdown line with the command that reproduces a results file."""
    flags = " --set " + " ".join(overrides) if overrides else ""
    return f"Reproduce: `.venv/bin/python benchmarks/{script}{flags}`"
