"""Feature-group ablation on MovieLens-100K: how much each group moves test metrics.

Runs pipelines/movielens-100k.toml once per variant, adding one feature group at a
time (ids only -> + demographics -> + genres/year -> + history aggregates -> + recent
items -> + time), and writes benchmarks/results/ablation_movielens100k.json and .md.

    .venv/bin/python benchmarks/ablation_movielens.py          # needs data/raw/ml-100k
"""

from __future__ import annotations

import argparse
import json
import time

from movielens_common import BENCHMARK_EVALUATION, METRICS, PIPELINE, RESULTS

USER_TABLE = ("age", "gender", "occupation", "zip_prefix")
ITEM_TABLE = ("genres", "year")

# Each variant: (name, overrides). Groups are switched off by dropping declared columns.
_NO_HISTORY = ["features.history=false", "features.recent_items=0", "features.time=[]"]
_NO_USERS = [f"features.user.{c}.kind='drop'" for c in USER_TABLE]
_NO_ITEMS = [f"features.item.{c}.kind='drop'" for c in ITEM_TABLE]
VARIANTS = [
    ("ids only", [*_NO_HISTORY, *_NO_USERS, *_NO_ITEMS]),
    ("+ demographics", [*_NO_HISTORY, *_NO_ITEMS]),
    ("+ genres, year", _NO_HISTORY),
    ("+ history aggregates", ["features.recent_items=0", "features.time=[]"]),
    ("+ recent items", ["features.time=[]"]),
    ("+ time (all features)", ["features.time=['hour','weekday','recency']"]),
]


def run_variant(overrides: list[str], epochs: int | None) -> tuple[dict[str, float], float]:
    from recsys_mtl.config import load_config
    from recsys_mtl.pipeline import run_pipeline

    extra = [
        "tracking.enabled=false",
        *BENCHMARK_EVALUATION,
        "training.progress=false",
        "pipeline.output_dir='data/processed/ablation-ml100k'",
    ]
    if epochs:
        extra.append(f"training.epochs={epochs}")
    config = load_config(PIPELINE, [*overrides, *extra])
    start = time.perf_counter()
    summary = run_pipeline(config)
    return summary.metrics, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    args = parser.parse_args()
    rows = []
    for name, overrides in VARIANTS:
        metrics, seconds = run_variant(overrides, args.epochs)
        rows.append(
            {"variant": name, "overrides": overrides, "seconds": round(seconds, 1)}
            | {m: round(metrics[m], 4) for m in METRICS if m in metrics}
        )
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablation_movielens100k.json").write_text(json.dumps(rows, indent=2) + "\n")
    header = "| variant | " + " | ".join(m.removeprefix("test/") for m in METRICS) + " | s |"
    lines = [
        "# MovieLens-100K feature ablation (each row adds one group to the one above)",
        "",
        header,
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for row in rows:
        cells = [f"{row.get(m, float('nan')):.4f}" for m in METRICS]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {row['seconds']} |")
    lines += ["", "Command: `.venv/bin/python benchmarks/ablation_movielens.py`"]
    (RESULTS / "ablation_movielens100k.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
