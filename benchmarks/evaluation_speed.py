"""How long offline evaluation takes at scale: 1 million test impressions and
full-ranking metrics for 100k users over 100k items, on this machine.

The data is synthetic with the shapes of a real evaluation: each of 100k users has 10
test impressions (1M rows, click / purchase / rating labels), 20 items seen before the
test (excluded from the ranking) and 5 relevant test items; 64-dim user and item
vectors rank all 100k items exactly (FAISS Flat, inner product), top 100 per user for
the Recall/NDCG-versus-K curve. `evaluate_systems` then scores the model and the
popularity baseline: AUC, GAUC, log loss, calibration, RMSE/MAE, Recall/NDCG/Precision/
HitRate/MRR@{10,20}, coverage, segments and 200 user-bootstrap resamples with paired
intervals.

    .venv/bin/python benchmarks/evaluation_speed.py             # 1M rows, 100k x 100k
    .venv/bin/python benchmarks/evaluation_speed.py --users 20000 --items 20000

Writes benchmarks/results/evaluation_speed.{json,md}. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from movielens_common import RESULTS

from recsys_mtl.config import TaskConfig
from recsys_mtl.evaluation.offline import EvaluationData, System, evaluate_systems
from recsys_mtl.retrieval.index import ItemIndex, ordered_topk

TASKS = {
    "click": TaskConfig(kind="binary", label="click", head="dot"),
    "purchase": TaskConfig(kind="binary", label="purchase", depends_on="click"),
    "rating": TaskConfig(kind="regression", label="rating"),
}


def _csr(rng: np.random.Generator, n_users: int, per_user: int, n_items: int) -> tuple:
    items = rng.integers(0, n_items, size=(n_users, per_user))
    return np.arange(0, n_users * per_user + 1, per_user, dtype=np.int64), items.reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rows-per-user", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--name", default="evaluation_speed")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    n_users, n_items, n_rows = args.users, args.items, args.users * args.rows_per_user
    taste = rng.normal(size=(n_users, args.dim)).astype(np.float32)
    items = rng.normal(size=(n_items, args.dim)).astype(np.float32)
    row_user = np.repeat(np.arange(n_users), args.rows_per_user)
    row_item = rng.integers(0, n_items, n_rows)
    affinity = np.einsum("nd,nd->n", taste[row_user], items[row_item]) / np.sqrt(args.dim)
    p_click = 1 / (1 + np.exp(-affinity))
    click = (rng.random(n_rows) < p_click).astype(float)
    purchase = np.where(click == 1, rng.random(n_rows) < 0.5, 0).astype(float)
    rating = np.where(click == 1, np.clip(np.round(3 + affinity), 1, 5), np.nan)
    seen_indptr, seen_items = _csr(rng, n_users, 20, n_items)
    relevant_indptr, relevant_items = _csr(rng, n_users, 5, n_items)
    popularity = np.bincount(seen_items, minlength=n_items).astype(np.float64)
    timings["generate data"] = time.perf_counter() - start

    start = time.perf_counter()
    index = ItemIndex.build(items, "Flat")
    _, top_model = index.search(taste, args.depth, seen_indptr, seen_items)
    timings[f"rank {n_items:,} items for {n_users:,} users (Flat, top {args.depth})"] = (
        time.perf_counter() - start
    )
    start = time.perf_counter()
    order = np.lexsort((np.arange(n_items), -popularity))
    top_popular = ordered_topk(order, n_users, args.depth, seen_indptr, seen_items)
    timings["rank by popularity"] = time.perf_counter() - start

    data = EvaluationData(
        row_user=row_user,
        labels={"click": click, "purchase": purchase, "rating": rating},
        ranking_user=np.arange(n_users),
        relevant_indptr=relevant_indptr,
        relevant_items=relevant_items,
        user_events=np.full(n_users, 20) - (np.arange(n_users) % 2) * 15,
        item_popularity=popularity,
        n_catalogue=n_items,
    )
    noisy = p_click * (0.8 + 0.4 * rng.random(n_rows))
    systems = [
        System(
            "model",
            "vectors",
            {
                "p_click": p_click,
                "p_purchase": noisy * 0.5,
                "p_purchase_given_click": np.full(n_rows, 0.5),
                "rating_pred": 3 + affinity,
            },
            top_items=top_model,
        ),
        System(
            "popularity",
            "counts",
            {"p_click": popularity[row_item], "p_purchase": popularity[row_item]},
            probabilities=False,
            top_items=top_popular,
        ),
    ]
    start = time.perf_counter()
    report = evaluate_systems(
        data,
        systems,
        TASKS,
        [10, 20],
        curve_ks=[1, 5, 10, 20, 50, 100],
        resamples=args.resamples,
        seed=0,
    )
    timings[f"metrics, segments and {args.resamples} bootstrap resamples (2 systems)"] = (
        time.perf_counter() - start
    )
    start = time.perf_counter()
    evaluate_systems(data, systems, TASKS, [10, 20], curve_ks=[1, 5, 10, 20, 50, 100], resamples=0)
    timings["the same without bootstrap"] = time.perf_counter() - start
    evaluation = sum(
        v for k, v in timings.items() if k not in ("generate data", "the same without bootstrap")
    )

    result = {
        "rows": n_rows,
        "users": n_users,
        "items": n_items,
        "dim": args.dim,
        "resamples": args.resamples,
        "seconds": timings,
        "evaluation_seconds": evaluation,
        "target_seconds": 60,
        "model_recall@20": report["systems"]["model"]["metrics"]["recall@20"],
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Evaluation speed",
        "",
        f"{n_rows:,} test impressions, full ranking of {n_items:,} items ({args.dim}-dim) for "
        f"{n_users:,} users, model + popularity, {os.cpu_count()} cores.",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        f"| **evaluation total (ranking + metrics + bootstrap)** | **{evaluation:.1f}** |",
        "",
        "Target: under 60 s. Reproduce: `.venv/bin/python benchmarks/evaluation_speed.py`",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
