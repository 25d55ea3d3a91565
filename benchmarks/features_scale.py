"""Benchmark: build features for 10 million synthetic impressions (1M users, 100k items).

Generates the impressions and side tables once into Parquet (not timed), then runs the
feature stage (read + validate + split + fit + history + encode + write shards) in a
fresh child process and records its wall time and peak RSS. Writes
benchmarks/results/features_scale.json and .md.

    .venv/bin/python benchmarks/features_scale.py            # 10M rows (the target)
    .venv/bin/python benchmarks/features_scale.py --users 100000 --items 10000  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from movielens_common import write_results

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS, TARGET_GB = 60.0, 4.0


def source_section(folder: Path) -> dict:
    """The pipeline's `source` section for the three files `generate` writes."""
    return {
        "kind": "impressions",
        "impressions": {
            "path": str(folder / "impressions.parquet"),
            "users_path": str(folder / "users.parquet"),
            "items_path": str(folder / "items.parquet"),
        },
    }


def generate(folder: Path, n_users: int, n_items: int, per_user: int, seed: int) -> None:
    """Write impressions.parquet, users.parquet and items.parquet (skipped if present)."""
    if (folder / "impressions.parquet").is_file():
        return
    from recsys_mtl.config import SyntheticSource
    from recsys_mtl.data.synthetic import generate_synthetic

    folder.mkdir(parents=True, exist_ok=True)
    cfg = SyntheticSource(n_users=n_users, n_items=n_items, impressions_per_user=per_user)
    data = generate_synthetic(cfg, seed)
    data.impressions.drop(
        [c for c in data.impressions.columns if c.startswith("true_")]
    ).write_parquet(folder / "impressions.parquet")
    data.users.write_parquet(folder / "users.parquet")
    data.items.write_parquet(folder / "items.parquet")


def child(folder: Path, out: Path) -> None:
    """The timed part: the pipeline's feature stage on the Parquet files."""
    from recsys_mtl.config import config_from_dict
    from recsys_mtl.data.sources import load_dataset
    from recsys_mtl.features.pipeline import build_features, save_features

    config = config_from_dict(
        {
            "source": source_section(folder),
            "tracking": {"enabled": False},
        }
    )
    stages: dict[str, float] = {}
    start = time.perf_counter()
    dataset = load_dataset(config)
    stages["read_and_validate"] = time.perf_counter() - start
    features = build_features(dataset, config)
    stages["build"] = time.perf_counter() - start - stages["read_and_validate"]
    mark = time.perf_counter()
    save_features(features, out, config.features.shard_rows)
    stages["write"] = time.perf_counter() - mark
    print(json.dumps({"stages": stages, "rows": features.spec["rows"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "benchmarks")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    folder = args.data / f"synthetic-{args.users}u-{args.items}i-{args.per_user}"
    generate(folder, args.users, args.items, args.per_user, seed=0)
    out = folder / "features"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"feature stage failed:\n{proc.stderr}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = sum(report["rows"].values())
    shards = sorted(p.relative_to(out).as_posix() for p in out.rglob("part-*.parquet"))
    result = {
        "benchmark": "features_scale",
        "users": args.users,
        "items": args.items,
        "impressions": rows,
        "wall_seconds": round(wall, 2),
        "peak_rss_gb": round(peak_gb, 3),
        "stages_seconds": {k: round(v, 2) for k, v in report["stages"].items()},
        "rows_per_split": report["rows"],
        "shards": shards,
        "target": {"seconds": TARGET_SECONDS, "peak_rss_gb": TARGET_GB},
        "meets_target": wall < TARGET_SECONDS and peak_gb < TARGET_GB,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/features_scale.py "
        f"--users {args.users} --items {args.items} --per-user {args.per_user}",
    }
    name = "features_scale" if args.users == 1_000_000 else f"features_scale_{args.users}"
    lines = [
        f"# Feature stage at scale: {rows:,} impressions, {args.users:,} users, "
        f"{args.items:,} items",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| wall time (s) | {wall:.1f} | < {TARGET_SECONDS:.0f} |",
        f"| peak RSS (GB) | {peak_gb:.2f} | < {TARGET_GB:.0f} |",
        *[f"| {k} (s) | {v:.1f} | |" for k, v in report["stages"].items()],
        "",
        f"Command: `{result['command']}` on {os.cpu_count()} CPUs.",
    ]
    write_results(name, result, "\n".join(lines))


if __name__ == "__main__":
    main()
