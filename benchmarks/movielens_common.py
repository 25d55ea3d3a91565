"""Paths and the reported metrics shared by the MovieLens-100K benchmark scripts."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
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

# The benchmarks train their own baselines and average over seeds: the pipeline's
# evaluation keeps only the cheap popularity baseline and skips the bootstrap.
BENCHMARK_EVALUATION = ("evaluation.baselines=['popularity']", "evaluation.bootstrap=0")


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


def reproduce_line(script: str) -> str:
    """The markdown line with the command (as it was run) that reproduces a results file."""
    flags = "".join(f" {shlex.quote(arg)}" for arg in sys.argv[1:])
    return f"Reproduce: `.venv/bin/python benchmarks/{script}{flags}`"


def write_results(name: str, result: dict, markdown: str) -> None:
    """benchmarks/results/NAME.json and NAME.md; the markdown is printed too."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip("\n") + "\n")
    print(markdown)
