"""Training speed against the peers: torch-rechub and DeepCTR-Torch beside ours.

The same ML-100K impressions (the per-user time split of pipelines/movielens-100k.toml,
4 sampled negatives per positive, every time-varying feature off, since the peers have
none), the same shapes (embedding dim 16 for every sparse feature; MMoE with 4 experts
of width 64, PLE with one level of 1 task and 1 shared expert of width 64; task towers
of width 32; click, purchase and rating; Adam at 1e-3), batch 1024 and 4096, one epoch
each from seed 0, one after the other, each in its own process and alone on the machine.
The peers get the features ours reads as sparse columns (user id, gender, age bucket,
occupation, zip prefix; item id, year bucket, first genre: ours pools every genre), fed
the way their documentation does it (torch-rechub's DataGenerator and
MTLTrainer.train_one_epoch, DeepCTR-Torch's `fit`); ours runs Trainer.train_epoch, what
`recsys-mtl train` runs, with static weights and no averaging, relation matrix or
retrieval loss; `ours_bfloat16` is the same with `training.precision = "bfloat16"`.
Adam's learning rate is chosen per framework, model and batch on a 1-2-5 grid from 1e-3
to 1e-1 on the validation rows; click and purchase AUC are then read on the same test
rows after that epoch, so speed is never bought with quality.

    .venv/bin/python benchmarks/peers_throughput.py --setup   # the peers' venv, once
    .venv/bin/python benchmarks/peers_throughput.py           # batch 1024 and 4096

The peers live in benchmarks/.venv-peers (benchmarks/peers-requirements.txt with our
constraints, then benchmarks/peers-packages.txt with --no-deps), so the project's
constraints stay clean. Writes benchmarks/results/peers_throughput.{json,md}. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np
import polars as pl
from movielens_common import PIPELINE, ROOT, reproduce_line, write_results

from recsys_mtl.config import load_config
from recsys_mtl.pipeline import features_stage

PEERS_VENV = ROOT / "benchmarks" / ".venv-peers"
DATA = ROOT / "data" / "benchmarks" / "peers"
ML100K = ROOT / "data" / "raw" / "ml-100k"
DIM = 16
FRAMEWORKS = ("torch_rechub", "deepctr_torch", "ours", "ours_bfloat16")
MODELS = ("mmoe", "ple")
REFERENCE = ("torch_rechub", "mmoe")
# Adam's learning rate is chosen per framework, model and batch on the validation rows
# (mean of click and purchase AUC after the epoch); the test rows are scored once
LEARNING_RATES = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
OVERRIDES = [
    f"pipeline.output_dir={DATA / 'pipeline'}",
    f"source.movielens.path={ML100K}",
    "tracking.enabled=false",
    "features.history=false",
    "features.recent_items=0",
    "features.recent_ratings=0",
    "features.time=[]",
    f"model.embedding_dim={DIM}",
    f"model.output_dim={DIM}",
    "model.hidden_dims=[64]",
    "model.head_hidden_dim=32",
    "model.experts=4",
    "model.levels=1",
    "model.shared_experts=1",
    "model.task_experts=1",
    "training.learning_rate=0.001",
    "training.weight_decay=0.0",
    "training.average_decay=0.0",
    "training.retrieval_loss_weight=0.0",
    "training.relation_every=0",
    "training.log_every=0",
    "training.ranking_users=0",
    "training.progress=false",
    "objectives.weighting='static'",
]
OURS = {"mmoe": ["model.sharing='mmoe'"], "ple": ["model.sharing='ple'"]}


def setup() -> None:
    """benchmarks/.venv-peers with the peers (pinned, --no-deps) and what they import."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    constraints = ["-c", str(ROOT / "constraints.txt")]
    requirements = ROOT / "benchmarks" / "peers-requirements.txt"
    subprocess.run([*pip, *constraints, "-r", str(requirements)], check=True)
    packages = ROOT / "benchmarks" / "peers-packages.txt"
    subprocess.run([*pip, "--no-deps", "-r", str(packages)], check=True)


def _side_columns(transform, side: str, frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Each table feature of `side` as one sparse column (a list: its first value)."""
    encoder = getattr(transform, f"{side}s")
    table = encoder.feature_table()
    index = frame[f"{side}_idx"].to_numpy()
    named = [c for c in encoder.spec.table if c.kind in ("categorical", "bucket")]
    columns = {f"{side}_{c.name}": table.categorical[index, i] for i, c in enumerate(named)}
    for name, values in table.lists.items():
        columns[f"{side}_{name}"] = values[index, 0]  # 0 (padding) when the list is empty
    return columns


def prepare() -> dict:
    """The feature set (ours) and the same rows as sparse columns (the peers)."""
    if not (ML100K / "u.data").is_file():
        raise SystemExit(
            f"no ML-100K in {ML100K}: python ../shared/datasets/movielens100k.py {ML100K}"
        )
    config = load_config(PIPELINE, [*OVERRIDES, *OURS["mmoe"]])
    features = features_stage(config)
    transform = features.transform
    sizes: dict[str, int] = {}
    for split in ("train", "validation", "test"):
        frame = features.splits[split]
        columns = {
            "user_id": frame["user_idx"].to_numpy(),
            "item_id": frame["item_idx"].to_numpy(),
            **_side_columns(transform, "user", frame),
            **_side_columns(transform, "item", frame),
        }
        for name, values in columns.items():
            sizes[name] = max(sizes.get(name, 0), int(values.max()) + 1)
        labels = {
            "click": frame["click"].cast(pl.Float32),
            "purchase": frame["purchase"].cast(pl.Float32),
            "rating": frame["rating"].cast(pl.Float32).fill_null(0.0),  # peers mask nothing
        }
        sparse = {k: v.astype(np.int64) for k, v in columns.items()}
        pl.DataFrame({**sparse, **labels}).write_parquet(DATA / f"{split}.parquet")
    sizes["user_id"] = transform.users.ids.size
    sizes["item_id"] = transform.items.ids.size
    meta = {
        "sparse": sizes,
        "dim": DIM,
        "pipeline": str(PIPELINE),
        "overrides": OVERRIDES,
        "ours": OURS,
        "features": str(features.folder),
    }
    (DATA / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def run_one(framework: str, model: str, batch: int, lr: float) -> dict:
    ours = framework.startswith("ours")
    python = sys.executable if ours else str(PEERS_VENV / "bin" / "python")
    worker = ROOT / "benchmarks" / "peers_worker.py"
    command = [python, str(worker), "--framework", framework, "--model", model]
    command += ["--batch", str(batch), "--lr", str(lr), "--data", str(DATA)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{framework} {model} batch {batch} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """One framework's runs (one per learning rate): the chosen one (validation AUC)
    with the best speed of them all (speed does not depend on the rate; the best of
    several runs is the least disturbed by the machine)."""
    chosen = max(runs, key=lambda r: r["validation_click_auc"] + r["validation_purchase_auc"])
    fastest = max(runs, key=lambda r: r["samples_per_second"])
    return {
        **chosen,
        "samples_per_second": fastest["samples_per_second"],
        "epoch_seconds": fastest["epoch_seconds"],
        "grid": runs,
    }


def markdown(rows: list[dict], batches: list[int], meta: dict) -> str:
    lines = [
        "# Training speed against the peers (ML-100K, one epoch, CPU)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {rows[0]['torch']}, {rows[0]['torch_threads']} threads. "
        f"{rows[0]['train_rows']:,} training impressions, "
        f"{len(meta['sparse'])} sparse features of dim {meta['dim']}; each run alone, in "
        "its own process, one epoch per learning rate in "
        f"{', '.join(f'{lr:g}' for lr in LEARNING_RATES)} (round robin over the "
        "frameworks). samples/s: the best of those runs; AUC: on the test rows, at the "
        "learning rate with the best validation AUC (click + purchase). Ratio: samples/s "
        "over torch-rechub MMoE's at the same batch.",
        "",
        "| batch | framework | model | samples/s | epoch s | vs torch-rechub MMoE "
        "| learning rate | click AUC | purchase AUC |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in batches:
        at = [r for r in rows if r["batch_size"] == batch]
        reference = next(
            r["samples_per_second"] for r in at if (r["framework"], r["model"]) == REFERENCE
        )
        for r in at:
            lines.append(
                f"| {batch} | {r['framework']} | {r['model']} | {r['samples_per_second']:,.0f} "
                f"| {r['epoch_seconds']:.2f} | {r['samples_per_second'] / reference:.2f}x "
                f"| {r['learning_rate']:g} | {r['test_click_auc']:.4f} "
                f"| {r['test_purchase_auc']:.4f} |"
            )
    lines += ["", reproduce_line("peers_throughput.py")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="make the peers' venv and stop")
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--name", default="peers_throughput")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    if not (PEERS_VENV / "bin" / "python").exists():
        raise SystemExit("no peers venv: run benchmarks/peers_throughput.py --setup first")
    DATA.mkdir(parents=True, exist_ok=True)
    meta = prepare()
    rows = []
    for batch in args.batch:
        # round robin over the frameworks, one learning rate at a time, so a slower spell
        # of the machine falls on all of them alike
        runs: dict[tuple[str, str], list[dict]] = {}
        for lr in args.learning_rates:
            for framework in args.frameworks:
                for model in args.models:
                    run = run_one(framework, model, batch, lr)
                    runs.setdefault((framework, model), []).append(run)
                    print(
                        f"batch {batch} lr {lr:g} {framework} {model}: "
                        f"{run['samples_per_second']:,.0f} samples/s, validation AUC "
                        f"{run['validation_click_auc']:.4f} / "
                        f"{run['validation_purchase_auc']:.4f}",
                        flush=True,
                    )
        rows += [summarise(group) for group in runs.values()]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/peers_throughput.py " + " ".join(sys.argv[1:]),
        "sparse_features": meta["sparse"],
        "rows": rows,
    }
    write_results(args.name, result, markdown(rows, args.batch, meta))


if __name__ == "__main__":
    main()
