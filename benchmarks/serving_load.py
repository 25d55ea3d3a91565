"""The served recommender under load: concurrent clients against `mlflow models serve`
on 127.0.0.1.

The bundle (ML-100K's when `make movielens-100k` has built it, else the demo's) is
saved as an MLflow pyfunc model and served with `--workers W` uvicorn workers. C
client threads (one HTTP session each) send R requests each, as fast as answers come
back: single-user retrieval queries (k=10) for known users and, one in
`--unknown-every`, a user the model has never seen (served by popularity); one
request in `--malformed-every` is malformed (not JSON, no `dataframe_records`, no
`user_id`, k = 0, a text user id), which must be answered 4xx while the server stays
up. Reported: errors (connection failures, 5xx, a wrong status), latency p50/p90/p99
of the well-formed requests, throughput, the server's resident memory before and
after, and whether 100 answers equal the in-process `Recommender.recommend`.

    .venv/bin/python benchmarks/serving_load.py                      # 20 x 500, 1 and 2 workers
    .venv/bin/python benchmarks/serving_load.py --clients 5 --requests 50 --workers 1

Writes benchmarks/results/serving_load.{json,md}. Run alone: the clients and the
server share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests
from movielens_common import ROOT, reproduce_line, write_results

from recsys_mtl.model_server import local_model_server
from recsys_mtl.recommender import Recommender
from recsys_mtl.serving import save_pyfunc_model

BUNDLES = [
    ROOT / "data" / "processed" / "movielens-100k" / "model",
    ROOT / "data" / "processed" / "demo" / "model",
]
UNKNOWN_USER = 10**9 + 7

# name -> (body, JSON or raw). Each must get a 4xx, never a 5xx or a dropped connection.
MALFORMED: dict[str, tuple[Any, bool]] = {
    "not JSON": (b'{"dataframe_records": [{"user_id": 1}', False),
    "no dataframe_records": ({"rows": [{"user_id": 1}]}, True),
    "no user_id": ({"dataframe_records": [{"customer": 1}]}, True),
    "k = 0": ({"dataframe_records": [{"user_id": 1}], "params": {"k": 0}}, True),
    "text user id": ({"dataframe_records": [{"user_id": "not-a-number"}]}, True),
}


def _query(user: Any) -> dict[str, Any]:
    return {"dataframe_records": [{"user_id": user}], "params": {"k": 10}}


def _client(
    url: str,
    users: list[int],
    n_requests: int,
    seed: int,
    args: argparse.Namespace,
    records: list[tuple[str, int, float, int]],
) -> None:
    """Send `n_requests`; append (kind, status, seconds, rows answered) per request."""
    rng = np.random.default_rng(seed)
    names = list(MALFORMED)
    session = requests.Session()
    for i in range(1, n_requests + 1):
        if i % args.malformed_every == 0:
            kind = names[(seed + i // args.malformed_every) % len(names)]
            body, is_json = MALFORMED[kind]
            send = {"json": body} if is_json else {"data": body}
            expected_rows = -1
        else:
            unknown = i % args.unknown_every == 0
            kind = "unknown user" if unknown else "known user"
            user = UNKNOWN_USER if unknown else users[int(rng.integers(len(users)))]
            send = {"json": _query(user)}
            expected_rows = 10
        start = time.perf_counter()
        try:
            response = session.post(
                f"{url}/invocations",
                headers={"Content-Type": "application/json"},
                timeout=60,
                **send,
            )
            status = response.status_code
            rows = len(response.json()["predictions"]) if status == 200 else -1
        except requests.RequestException:
            status, rows = 0, -1  # connection failure or timeout
        seconds = time.perf_counter() - start
        records.append((kind, status, seconds, rows if expected_rows > 0 else -1))


def _agreement(url: str, recommender: Recommender, users: list[int]) -> float:
    """Share of users whose REST answer equals the in-process one (items, in order)."""
    same = 0
    for user in users:
        response = requests.post(f"{url}/invocations", json=_query(user), timeout=60)
        served = pd.DataFrame(response.json()["predictions"])["item_id"].tolist()
        local = recommender.recommend([user], k=10)["item_id"].to_list()
        same += served == local
    return same / len(users)


def in_process_latency(recommender: Recommender, users: list[int], n: int = 500) -> dict:
    """p50/p99 of one-user `Recommender.recommend` calls (k=10), one after another: the
    service time a worker spends per request, without HTTP and MLflow."""
    rng = np.random.default_rng(3)
    picked = [users[int(i)] for i in rng.integers(0, len(users), n)]
    for user in picked[:20]:
        recommender.recommend([user], k=10)
    seconds = []
    for user in picked:
        start = time.perf_counter()
        recommender.recommend([user], k=10)
        seconds.append(time.perf_counter() - start)
    ms = np.asarray(seconds) * 1000
    return {
        "requests": n,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def load_test(
    recommender: Recommender, model: Path, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    users = recommender.transform.users.ids.values.to_list()
    env = {"OMP_NUM_THREADS": "1"}  # each worker one thread; the clients need a core too
    log = Path(tempfile.gettempdir()) / f"serving_load_{workers}.log"
    with local_model_server(str(model), workers=workers, env=env, log=log) as server:
        warm = requests.Session()
        for user in users[:20]:
            warm.post(f"{server.url}/invocations", json=_query(user), timeout=60)
        memory_before = server.resident_bytes()
        records: list[tuple[str, int, float, int]] = []
        threads = [
            threading.Thread(
                target=_client,
                args=(server.url, users, args.requests, seed, args, records),
            )
            for seed in range(args.clients)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        alive = requests.get(f"{server.url}/ping", timeout=5).status_code == 200
        memory_after = server.resident_bytes()
        rng = np.random.default_rng(7)
        sample = [users[int(i)] for i in rng.integers(0, len(users), 100)]
        agreement = _agreement(server.url, recommender, sample)
    return summarise(records, wall, workers, args, alive, memory_before, memory_after, agreement)


def summarise(
    records: list[tuple[str, int, float, int]],
    wall: float,
    workers: int,
    args: argparse.Namespace,
    alive: bool,
    memory_before: int,
    memory_after: int,
    agreement: float,
) -> dict[str, Any]:
    frame = pd.DataFrame(records, columns=["kind", "status", "seconds", "rows"])
    good = frame[frame["kind"].isin(["known user", "unknown user"])]
    bad = frame[~frame.index.isin(good.index)]
    wrong_good = int(((good["status"] != 200) | (good["rows"] != 10)).sum())
    wrong_bad = int((~bad["status"].between(400, 499)).sum())
    ms = good["seconds"].to_numpy() * 1000
    return {
        "workers": workers,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "requests": len(frame),
        "well_formed": len(good),
        "malformed": len(bad),
        "errors": wrong_good + wrong_bad,
        "well_formed_not_answered": wrong_good,
        "malformed_not_4xx": wrong_bad,
        "malformed_statuses": {
            kind: dict(Counter(map(int, group["status"]))) for kind, group in bad.groupby("kind")
        },
        "server_up_after": alive,
        "seconds": wall,
        "requests_per_second": len(frame) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "server_rss_before_mb": memory_before / 2**20,
        "server_rss_after_mb": memory_after / 2**20,
        "answers_equal_in_process": agreement,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Serving under load",
        "",
        f"Machine: {result['machine']}. Model: `{result['bundle']}` ({result['users']:,} "
        f"users, {result['items']:,} items) served by "
        "`mlflow models serve` on 127.0.0.1 (`OMP_NUM_THREADS=1` per worker). Each "
        f"client thread sends its requests one after another; one in "
        f"{result['malformed_every']} is malformed, one in {result['unknown_every']} asks "
        "for an unknown user. Latency is over the well-formed requests, as the client sees "
        "it (the clients share the 2 cores with the server).",
        "",
        reproduce_line("serving_load.py"),
        "",
        "| workers | clients x requests | errors | malformed answered 4xx | server up after "
        "| p50 ms | p90 ms | p99 ms | max ms | requests/s | server RSS before -> after MB "
        "| answers = in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['workers']} | {r['clients']} x {r['requests_per_client']} | {r['errors']} "
            f"| {r['malformed'] - r['malformed_not_4xx']} / {r['malformed']} "
            f"| {'yes' if r['server_up_after'] else 'NO'} | {r['p50_ms']:.1f} "
            f"| {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['requests_per_second']:.0f} "
            f"| {r['server_rss_before_mb']:.0f} -> {r['server_rss_after_mb']:.0f} "
            f"| {r['answers_equal_in_process']:.0%} |"
        )
    p = result["in_process"]
    lines += [
        "",
        f"One user at a time in process (`Recommender.recommend`, k=10, {p['requests']} "
        f"calls): p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms.",
        "",
        "Statuses of the malformed requests:",
        "",
    ]
    for r in result["runs"]:
        statuses = "; ".join(
            f"{kind}: {codes}" for kind, codes in sorted(r["malformed_statuses"].items())
        )
        lines.append(f"- {r['workers']} worker(s): {statuses}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500, help="per client")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--malformed-every", type=int, default=25)
    parser.add_argument("--unknown-every", type=int, default=20)
    parser.add_argument("--bundle", help="a bundle folder (default: ML-100K's, else demo's)")
    parser.add_argument("--name", default="serving_load")
    args = parser.parse_args()
    found = [Path(args.bundle)] if args.bundle else [b for b in BUNDLES if b.is_dir()]
    if not found or not (found[0] / "manifest.json").is_file():
        sys.exit("no bundle: run `make movielens-100k` or `make demo` first, or pass --bundle")
    bundle = found[0]
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/serving_load.py " + " ".join(sys.argv[1:]),
        "bundle": str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle),
        "malformed_every": args.malformed_every,
        "unknown_every": args.unknown_every,
        "runs": [],
    }
    recommender = Recommender.load(bundle)
    users = recommender.transform.users.ids.values.to_list()
    result["users"], result["items"] = len(users), len(recommender.transform.items.ids.values)
    result["in_process"] = in_process_latency(recommender, users)
    print(f"in process: {result['in_process']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_pyfunc_model(bundle, Path(tmp) / "model")
        for workers in args.workers:
            run = load_test(recommender, model, workers, args)
            print(json.dumps(run), flush=True)
            result["runs"].append(run)
    write_results(args.name, result, markdown(result))


if __name__ == "__main__":
    main()
