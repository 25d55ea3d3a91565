"""Benchmark: 10 million synthetic impressions end to end with bounded memory.

The pipeline's stages in the order `recsys-mtl run` takes them (features, one epoch of
training streamed from the Parquet shards, index with its quality report, evaluation
with baselines, sample queries) in a fresh child process, with the wall time and the
peak resident memory (RSS) of each stage, sampled every 50 ms. The impressions are the
ones `benchmarks/features_scale.py` generates (1M users, 100k items, 10 each).
Writes benchmarks/results/out_of_core.json and .md.

    .venv/bin/python benchmarks/out_of_core.py                # streamed (the default)
    .venv/bin/python benchmarks/out_of_core.py --in-memory    # for comparison
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_scale import generate, source_section
from movielens_common import write_results

ROOT = Path(__file__).resolve().parents[1]
TARGET_GB = 8.0


class PeakRss:
    """Samples this process's RSS in a thread; `stage()` returns the peak since the
    previous call."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every)

    def stage(self) -> float:
        peak, self.peak = max(self.peak, self.rss()), self.rss()
        return peak / 1e9


def child(folder: Path, out: Path, in_memory: bool, bootstrap: int, baselines: list[str]) -> None:
    from recsys_mtl.config import config_from_dict
    from recsys_mtl.features.pipeline import load_features
    from recsys_mtl.pipeline import (
        Paths,
        evaluate_stage,
        features_stage,
        index_stage,
        sample_queries,
        train_stage,
    )

    config = config_from_dict(
        {
            "pipeline": {"name": "out-of-core", "output_dir": str(out), "seed": 42},
            "source": source_section(folder),
            "model": {"sharing": "hard", "embedding_dim": 32, "hidden_dims": [64]},
            "training": {
                "epochs": 1,
                "batch_size": 4096,
                "progress": False,
                "in_memory_rows": 10**12 if in_memory else 5_000_000,
            },
            "evaluation": {"bootstrap": bootstrap, "baselines": baselines},
            "tracking": {"enabled": False},
        }
    )
    rss = PeakRss()
    stages: dict[str, dict[str, float]] = {}

    def done(name: str, start: float) -> None:
        stages[name] = {"seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": 0.0}
        stages[name]["peak_rss_gb"] = round(rss.stage(), 3)

    start = time.perf_counter()
    features = features_stage(config)
    if features.spec["rows"]["train"] > config.training.in_memory_rows:
        features = load_features(Paths(config.output_path).features)  # as run_pipeline does
        gc.collect()
    done("features", start)
    start = time.perf_counter()
    recommender, result = train_stage(config, features)
    done("train (1 epoch)", start)
    start = time.perf_counter()
    index_stage(config, recommender)
    done("index", start)
    start = time.perf_counter()
    metrics = evaluate_stage(config, recommender, features)
    done("evaluate", start)
    start = time.perf_counter()
    samples = sample_queries(config, recommender, features)
    done("sample queries", start)
    print(
        json.dumps(
            {
                "stages": stages,
                "rows": features.spec["rows"],
                "train_loaded_whole": features.in_memory("train"),
                "train_samples_per_second": features.spec["rows"]["train"] / result.seconds,
                "metrics": {
                    k: round(v, 4)
                    for k, v in metrics.items()
                    if k.split("/")[-1] in ("click_auc", "purchase_auc", "rating_rmse", "recall@10")
                    and k.count("/") == 1
                    and k.split("/")[0] in ("test", "popularity", "item_mean")
                },
                "sample_rows": samples.height,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--in-memory", action="store_true", help="load the training split")
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--baselines", default="popularity,global_mean,user_mean,item_mean")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "benchmarks")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    baselines = [b for b in args.baselines.split(",") if b]
    if args.child:
        child(*args.child, args.in_memory, args.bootstrap, baselines)
        return
    folder = args.data / f"synthetic-{args.users}u-{args.items}i-{args.per_user}"
    generate(folder, args.users, args.items, args.per_user, seed=0)
    out = folder / ("pipeline-in-memory" if args.in_memory else "pipeline")
    command = [sys.executable, __file__, "--child", str(folder), str(out)]
    command += ["--bootstrap", str(args.bootstrap), "--baselines", args.baselines]
    command += ["--in-memory"] if args.in_memory else []
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"pipeline failed:\n{proc.stderr[-5000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = max(s["peak_rss_gb"] for s in report["stages"].values())
    mode = "in-memory" if args.in_memory else "streamed"
    result = {
        "benchmark": "out_of_core",
        "mode": mode,
        "users": args.users,
        "items": args.items,
        "impressions": sum(report["rows"].values()),
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": peak,
        **report,
        "target": {"peak_rss_gb": TARGET_GB},
        "meets_target": peak < TARGET_GB,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/out_of_core.py" + (" --in-memory" if args.in_memory else ""),
    }
    name = "out_of_core" if not args.in_memory else "out_of_core_in_memory"
    lines = [
        f"# End to end at scale ({mode}): {result['impressions']:,} impressions, "
        f"{args.users:,} users, {args.items:,} items",
        "",
        "| stage | seconds | peak RSS (GB) |",
        "|---|---:|---:|",
        *[
            f"| {name} | {s['seconds']:.1f} | {s['peak_rss_gb']:.2f} |"
            for name, s in report["stages"].items()
        ],
        f"| **whole run** | **{wall:.1f}** | **{peak:.2f}** (target < {TARGET_GB:.0f}) |",
        "",
        f"Training: {report['train_samples_per_second']:,.0f} samples/s over "
        f"{report['rows']['train']:,} rows; the training split was "
        f"{'loaded whole' if report['train_loaded_whole'] else 'streamed, never loaded whole'}.",
        "",
        "Test metrics: " + ", ".join(f"{k} {v}" for k, v in sorted(report["metrics"].items())),
        "",
        f"Command: `{result['command']}` on {os.cpu_count()} CPUs.",
    ]
    write_results(name, result, "\n".join(lines))


if __name__ == "__main__":
    main()
