"""Training throughput: samples per second of our trainer beside two references.

One MMoE model (embedding dim 16, 4 experts of width 64, task towers of width 32;
click, purchase and rating) on ML-100K-sized synthetic data (943 users, 1682 items,
about 350k training impressions), trained three ways for one epoch each:

  trainer     recsys_mtl's Trainer.train_epoch (what `recsys-mtl train` runs; relation
              matrix, averaging and probes off, static weights)
  dataloader  the usual way: a torch Dataset returning one row's tensors and a
              DataLoader(shuffle=True) collating them into batches
  tight loop  the bound for eager PyTorch: slices of pre-built tensors in a bare loop
              with the same forward, losses, backward and Adam step

The references use the same model and loss code, so the gaps are the feeding and the
per-step bookkeeping. Targets: trainer >= 3x dataloader and >= 85% of the tight loop.

    .venv/bin/python benchmarks/training_throughput.py            # batch 1024 and 4096
    .venv/bin/python benchmarks/training_throughput.py --batch 1024
    .venv/bin/python benchmarks/training_throughput.py --device cuda --name training_throughput_gpu

On a GPU the tight loop keeps the whole training set on the device, the DataLoader
copies each batch there, and the trainer does what `recsys-mtl train --device cuda`
does.

Writes benchmarks/results/training_throughput.{json,md}. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import torch
from movielens_common import RESULTS
from torch.utils.data import DataLoader, Dataset

from recsys_mtl.config import config_from_dict
from recsys_mtl.model.multitask import build_model
from recsys_mtl.objectives.losses import task_losses
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.pipeline import features_stage
from recsys_mtl.training.tensors import TensorData
from recsys_mtl.training.trainer import Trainer

ML100K_IMPRESSIONS = 500_000
"""ML-100K's 100k ratings with 4 sampled negatives each."""


def _config(output_dir: str, batch_size: int, args: argparse.Namespace) -> Any:
    per_user = max(1, round(ML100K_IMPRESSIONS / args.users))
    return config_from_dict(
        {
            "pipeline": {"output_dir": output_dir, "seed": 0},
            "source": {
                "synthetic": {
                    "n_users": args.users,
                    "n_items": args.items,
                    "impressions_per_user": per_user,
                }
            },
            "model": {
                "sharing": "mmoe",
                "embedding_dim": args.dim,
                "experts": 4,
                "hidden_dims": [64],
                "output_dim": args.dim,
                "head_hidden_dim": 32,
            },
            "training": {
                "batch_size": batch_size,
                "progress": False,
                "relation_every": 0,
                "log_every": 0,
                "average_decay": 0.0,
                "ranking_users": 0,
            },
            "tracking": {"enabled": False},
        }
    )


class RowDataset(Dataset):
    """One impression per item, as the usual libraries feed their models."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        d = self.data
        return {
            "users": d.users[i],
            "items": d.items[i],
            "user_cat": d.user_rows.categorical[i],
            "user_num": d.user_rows.numeric[i],
            "user_lists": {k: v[i] for k, v in d.user_rows.lists.items()},
            "item_cat": d.item_rows.categorical[i],
            "item_num": d.item_rows.numeric[i],
            "item_lists": {k: v[i] for k, v in d.item_rows.lists.items()},
            "labels": {k: v[i] for k, v in d.labels.items()},
        }


def _step(model: Any, optimizer: Any, tasks: Any, batch: TensorData) -> None:
    outputs = model(batch.users, batch.items, batch.user_rows, batch.item_rows)
    losses = task_losses(outputs, model.log_probabilities(outputs), batch.labels, tasks)
    total = sum(tasks[name].weight * loss for name, loss in losses.items())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def _fresh(config: Any, features: Any, train: TensorData, device: torch.device) -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = build_model(features.transform, config.model, config.tasks, train.label_means())
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.training.learning_rate)
    return model.train(), optimizer


def _seconds_since(start: float, device: torch.device) -> float:
    """Wall time since `start`, once the device has finished the queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_trainer(config: Any, features: Any, train: TensorData, device: torch.device) -> float:
    model, _ = _fresh(config, features, train, device)
    weighting = WEIGHTING["static"](config.tasks, config.objectives)
    trainer = Trainer(model, config.tasks, weighting, config.training, 0, device=device)
    start = time.perf_counter()
    trainer.train_epoch(train, 1)
    return len(train) / _seconds_since(start, device)


def run_tight(config: Any, features: Any, train: TensorData, device: torch.device) -> float:
    model, optimizer = _fresh(config, features, train, device)
    size = config.training.batch_size
    data = train.to(device)
    start = time.perf_counter()
    order = torch.randperm(len(data), device=device)
    for lo in range(0, len(data), size):
        _step(model, optimizer, config.tasks, data.take(order[lo : lo + size]))
    return len(data) / _seconds_since(start, device)


def run_dataloader(config: Any, features: Any, train: TensorData, device: torch.device) -> float:
    from recsys_mtl.model.embeddings import RowInputs

    model, optimizer = _fresh(config, features, train, device)
    loader = DataLoader(RowDataset(train), batch_size=config.training.batch_size, shuffle=True)
    start = time.perf_counter()
    for rows in loader:
        batch = TensorData(
            rows["users"],
            rows["items"],
            RowInputs(rows["user_cat"], rows["user_num"], rows["user_lists"]),
            RowInputs(rows["item_cat"], rows["item_num"], rows["item_lists"]),
            rows["labels"],
        )
        _step(model, optimizer, config.tasks, batch.to(device))
    return len(train) / _seconds_since(start, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=2, help="epochs per way; best kept")
    parser.add_argument("--users", type=int, default=943, help="user table rows")
    parser.add_argument("--items", type=int, default=1682, help="item table rows")
    parser.add_argument("--dim", type=int, default=16, help="embedding dim")
    parser.add_argument(
        "--ways", nargs="+", default=["trainer", "tight_loop", "dataloader"], help="what to run"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--name", default="training_throughput")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        features = features_stage(_config(tmp, args.batch[0], args))
        for batch_size in args.batch:
            config = _config(tmp, batch_size, args)
            train = TensorData.from_frame(features.train, config.tasks, features.transform)
            row: dict[str, Any] = {"batch_size": batch_size, "train_rows": len(train)}
            for name, run in (
                ("trainer", run_trainer),
                ("tight_loop", run_tight),
                ("dataloader", run_dataloader),
            ):
                if name not in args.ways:
                    continue
                row[name] = max(run(config, features, train, device) for _ in range(args.repeats))
                print(f"batch {batch_size} {name}: {row[name]:,.0f} samples/s", flush=True)
            if {"trainer", "dataloader", "tight_loop"} <= set(row):
                row["vs_dataloader"] = row["trainer"] / row["dataloader"]
                row["vs_tight_loop"] = row["trainer"] / row["tight_loop"]
            rows.append(row)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python benchmarks/training_throughput.py " + " ".join(sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "device": str(device)
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "rows": rows,
    }
    lines = [
        f"# Training throughput (MMoE, dim {args.dim}, 4 experts x 64, towers 32, three "
        f"tasks; {args.users:,} users x {args.items:,} items)",
        "",
        f"Machine: {result['machine']}, torch threads {result['torch_threads']}, "
        f"device {result['device']}. "
        f"Command: `{result['command']}`. Best of {args.repeats} epochs per way.",
        "",
        "| batch | trainer samples/s | tight loop | DataLoader | trainer / DataLoader "
        "| trainer / tight loop |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r[w]:,.0f}" if w in r else "-" for w in ("trainer", "tight_loop", "dataloader")]
        ratios = [
            f"{r['vs_dataloader']:.2f}x" if "vs_dataloader" in r else "-",
            f"{r['vs_tight_loop']:.0%}" if "vs_tight_loop" in r else "-",
        ]
        lines.append(f"| {r['batch_size']} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "Targets: trainer >= 3x DataLoader and >= 85% of the tight loop."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
