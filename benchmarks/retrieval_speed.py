"""Candidate retrieval speed: batched top-100 over 1 million items, and single-user
queries through the Python API and over REST.

Part 1 (index): 1M item vectors and 10k query vectors, 64-dim, inner product. Exact
search (Flat) is the reference; IVF with 8-bit vectors (the 'auto' choice at this
size), IVF with float vectors and HNSW are swept over nprobe / efSearch, reporting
recall@100 against exact search and batched queries per second. The vectors are
synthetic with the shape of learned embeddings: 1024 topic centres with a decaying
spectrum, items and users scattered around them (pass
`--vectors items.npy --queries users.npy` to measure your own).

Part 2 (single users): the ML-100K bundle (`make movielens-100k` builds it) answers
one user at a time, k=10, through `Recommender.recommend` and through
`mlflow models serve` on 127.0.0.1 (one client, sequential requests): p50/p99 latency
and queries per second.

    .venv/bin/python benchmarks/retrieval_speed.py
    .venv/bin/python benchmarks/retrieval_speed.py --items 200000 --skip-hnsw --skip-rest

Writes benchmarks/results/retrieval_speed.{json,md} and retrieval_speed.png. Run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from movielens_common import RESULTS

from recsys_mtl.plots import recall_speed
from recsys_mtl.retrieval.index import ItemIndex, default_factory
from recsys_mtl.retrieval.quality import measure_quality

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "data" / "processed" / "movielens-100k" / "model"


def synthetic_vectors(
    n_items: int, n_queries: int, dim: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Items and queries around 1024 shared centres; spectrum scale_j = j^-0.5."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    centres = rng.standard_normal((1024, dim)).astype(np.float32) * scale
    items = centres[rng.integers(0, 1024, n_items)]
    items += 0.5 * rng.standard_normal((n_items, dim)).astype(np.float32) * scale
    queries = centres[rng.integers(0, 1024, n_queries)]
    queries += 0.5 * rng.standard_normal((n_queries, dim)).astype(np.float32) * scale
    return items.astype(np.float32), queries.astype(np.float32)


def index_part(args: argparse.Namespace) -> dict:
    if args.vectors:
        items = np.load(args.vectors).astype(np.float32)
        queries = np.load(args.queries).astype(np.float32)[: args.queries_n]
    else:
        items, queries = synthetic_vectors(args.items, args.queries_n, args.dim)
    factories = [default_factory(len(items))]
    if not args.skip_flat_ivf:
        factories.append(factories[0].replace(",SQ8", ",Flat"))
    if not args.skip_hnsw:
        factories.append("HNSW32")
    if args.pq:
        factories.append(args.pq)
    results = []
    exact_qps = None
    for factory in factories:
        start = time.perf_counter()
        index = ItemIndex.build(items, factory)
        build = time.perf_counter() - start
        print(f"{factory}: built in {build:.1f} s", flush=True)
        report = measure_quality(
            index, items, queries, k=args.k, target_recall=args.target, repeats=2
        )
        exact_qps = report.exact_queries_per_second
        for point in report.points:
            print(
                f"  {point.parameter}={point.value}: recall@{args.k} {point.recall:.4f}, "
                f"{point.queries_per_second:,.0f} q/s",
                flush=True,
            )
        results.append({"factory": index.factory, "build_seconds": build, **report.to_dict()})
    print(f"exact (Flat): {exact_qps:,.0f} q/s", flush=True)
    return {
        "n_items": len(items),
        "n_queries": len(queries),
        "dim": int(items.shape[1]),
        "k": args.k,
        "target_recall": args.target,
        "exact_queries_per_second": exact_qps,
        "indexes": results,
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "queries_per_second": float(len(ms) / (ms.sum() / 1000)),
        "requests": len(ms),
    }


def api_part(bundle: Path, n: int) -> tuple[dict, list[int]]:
    from recsys_mtl.recommender import Recommender

    recommender = Recommender.load(bundle)
    users = recommender.transform.users.ids.values.to_list()
    rng = np.random.default_rng(1)
    picked = [users[i] for i in rng.integers(0, len(users), n)]
    recommender.recommend([picked[0]], k=10)  # warm caches
    seconds = []
    for user in picked:
        start = time.perf_counter()
        recommender.recommend([user], k=10)
        seconds.append(time.perf_counter() - start)
    return _percentiles(seconds), picked


def rest_part(bundle: Path, users: list[int]) -> dict:
    import requests

    from recsys_mtl.model_server import local_model_server
    from recsys_mtl.serving import save_pyfunc_model

    with tempfile.TemporaryDirectory() as tmp:
        model = save_pyfunc_model(bundle, Path(tmp) / "model")
        with local_model_server(str(model)) as server:
            session = requests.Session()
            url = f"{server.url}/invocations"
            body = {"dataframe_records": [{"user_id": users[0]}], "params": {"k": 10}}
            session.post(url, json=body, timeout=30).raise_for_status()
            seconds = []
            for user in users:
                body = {"dataframe_records": [{"user_id": user}], "params": {"k": 10}}
                start = time.perf_counter()
                session.post(url, json=body, timeout=30).raise_for_status()
                seconds.append(time.perf_counter() - start)
    return _percentiles(seconds)


def markdown(result: dict) -> str:
    part = result["index"]
    lines = [
        "# Retrieval speed",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        f"## Batched top-{part['k']} over {part['n_items']:,} items ({part['dim']}-dim, "
        f"{part['n_queries']:,} queries)",
        "",
        f"Exact scan (Flat): {part['exact_queries_per_second']:,.0f} queries/s.",
        "",
        "| index | build s | setting | recall@100 | queries/s |",
        "|---|---:|---|---:|---:|",
    ]
    for entry in part["indexes"]:
        for point in entry["points"]:
            chosen = " **(chosen)**" if point == entry["chosen"] else ""
            setting = f"{point['parameter']}={point['value']}" if point["parameter"] else "-"
            lines.append(
                f"| {entry['factory']} | {entry['build_seconds']:.1f} | {setting}{chosen} | "
                f"{point['recall']:.4f} | {point['queries_per_second']:,.0f} |"
            )
    for name in ("api", "rest"):
        if name in result:
            r = result[name]
            lines += [
                "",
                f"## Single-user queries, k=10, {'Python API' if name == 'api' else 'REST'}",
                "",
                f"{r['requests']} sequential requests: p50 {r['p50_ms']:.2f} ms, p99 "
                f"{r['p99_ms']:.2f} ms, {r['queries_per_second']:,.0f} queries/s.",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries-n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--vectors", help="item vectors (.npy, (N, D) float)")
    parser.add_argument("--queries", help="query vectors (.npy, (Q, D) float)")
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--skip-flat-ivf", action="store_true", help="skip IVF without SQ8")
    parser.add_argument("--pq", default="", help="also an IVF-PQ factory, e.g. IVF4096,PQ32")
    parser.add_argument("--skip-rest", action="store_true")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--bundle", default=str(BUNDLE))
    parser.add_argument("--name", default="retrieval_speed")
    args = parser.parse_args()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/retrieval_speed.py " + " ".join(sys.argv[1:]),
        "index": index_part(args),
    }
    bundle = Path(args.bundle)
    if (bundle / "manifest.json").is_file():
        result["api"], users = api_part(bundle, args.requests)
        print(f"API: {result['api']}", flush=True)
        if not args.skip_rest:
            result["rest"] = rest_part(bundle, users)
            print(f"REST: {result['rest']}", flush=True)
    else:
        print(f"no bundle at {bundle}: run `make movielens-100k` for the single-user part")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    curves = {
        e["factory"]: [
            (p["recall"], p["queries_per_second"], str(p["value"] or "")) for p in e["points"]
        ]
        for e in result["index"]["indexes"]
    }
    recall_speed(
        curves,
        f"top-{args.k} over {result['index']['n_items']:,} items",
        RESULTS / f"{args.name}.png",
        target=args.target,
        exact_qps=result["index"]["exact_queries_per_second"],
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
