"""Where a training step's time goes, and the bound this machine sets for it.

Trains our MMoE (or PLE) of benchmarks/peers_throughput.py on its ML-100K rows (run
that once first: it writes data/benchmarks/peers), or with `--pipeline` the model a
pipeline file trains, on that pipeline's own training rows, and reports:

- samples/s of Trainer.train_epoch over the first `--batches` batches (after one
  warm-up pass over them);
- the torch.profiler table of one such pass: the operators by self CPU time;
- FLOPs per training sample (forward and backward, torch.utils.flop_counter) and what
  this machine's matrix products reach on the step's own largest product shape; their
  ratio is the compute bound: the samples/s the step would run at if it did nothing
  but its matrix products at that speed;
- the bytes of parameters, gradients and Adam moments each step reads and writes
  (every dense parameter is touched once per step whatever the batch).

    .venv/bin/python benchmarks/profile_training.py --batch 1024
    .venv/bin/python benchmarks/profile_training.py --batch 4096 --model ple
    .venv/bin/python benchmarks/profile_training.py --pipeline pipelines/movielens-100k.toml

Writes benchmarks/results/profile_training_<model or pipeline>_<batch>.{json,md}. Run
it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from movielens_common import ROOT, reproduce_line, write_results
from peers_worker import ours_trainer
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from recsys_mtl.config import load_config
from recsys_mtl.model.multitask import build_model
from recsys_mtl.pipeline import _trainer as pipeline_trainer
from recsys_mtl.pipeline import features_stage, retrieval_task_name
from recsys_mtl.training.inputs import training_input
from recsys_mtl.training.tensors import TensorData
from recsys_mtl.training.trainer import Trainer

DATA = ROOT / "data" / "benchmarks" / "peers"


def _trainer(model_name: str, batch: int, precision: str = "float32") -> tuple[Trainer, TensorData]:
    meta = json.loads((DATA / "meta.json").read_text())
    trainer, _, _, rows = ours_trainer(meta, model_name, batch, precision=precision)
    return trainer, rows


def _pipeline_trainer(pipeline: Path, batch: int, precision: str) -> tuple[Trainer, TensorData]:
    """The trainer `recsys-mtl train` builds for `pipeline` (weighting, retrieval loss
    and its frequency correction, averaging, relations as the file says), on that
    pipeline's own training rows (its features are built first), at the profile's batch
    size and precision."""
    overrides = ["tracking.enabled=false", "training.progress=false"]
    overrides += [f"training.batch_size={batch}", f"training.precision='{precision}'"]
    config = load_config(pipeline, overrides)
    features = features_stage(config)
    label = config.tasks[retrieval_task_name(config)].label
    inputs = training_input(features, ["train"], config.tasks, config.training, label)
    if not isinstance(inputs.rows, TensorData):
        raise SystemExit(f"{pipeline}'s training rows are streamed; profile a smaller split")
    model = build_model(features.transform, config.model, config.tasks, inputs.label_means)
    trainer = pipeline_trainer(config, model, inputs, None, None)
    trainer._prepare()
    return trainer, inputs.rows


def _matmul_rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """FLOP/s of (m, k) @ (k, n) products on this machine, as many as fit in `seconds`."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(10):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2.0 * m * k * n * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--model", choices=["mmoe", "ple"], default="mmoe")
    parser.add_argument("--batches", type=int, default=100, help="batches timed")
    parser.add_argument("--rows", type=int, default=25, help="operator rows shown")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--pipeline", type=Path, help="profile this pipeline file's model instead (--model unused)"
    )
    args = parser.parse_args()
    if args.pipeline is not None:
        trainer, rows = _pipeline_trainer(args.pipeline, args.batch, args.precision)
        subject, source = args.pipeline.stem, f"{args.pipeline}'s training rows"
    else:
        if not (DATA / "meta.json").is_file():
            raise SystemExit("run benchmarks/peers_throughput.py first (it writes the rows)")
        trainer, rows = _trainer(args.model, args.batch, args.precision)
        subject, source = args.model, "the peer benchmark's rows"
    # a seeded sample of the rows, not the first ones: those are sorted by user, and a
    # batch of them would hold a few dozen distinct users instead of a shuffled batch's
    # ~500 (at 1024), which made the deduplicated step look faster than an epoch's
    sample = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    part = rows.take(sample[: args.batch * args.batches])
    n_batches = -(-len(part) // args.batch)  # fewer than asked when the rows run out
    trainer.train_epoch(part, 1)  # warm-up: allocator, kernels, optimiser state
    start = time.perf_counter()
    trainer.train_epoch(part, 2)
    samples_per_second = len(part) / (time.perf_counter() - start)

    # the shares from a pass without shape recording (recording them inflates the
    # cheap operators several times over); the shapes from a second, recorded pass
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_epoch(part, 3)
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    top = sorted(averages, key=lambda e: -e.self_cpu_time_total)[: args.rows]
    operators = [
        {
            "operator": e.key,
            "calls_per_step": e.count / n_batches,
            "share": e.self_cpu_time_total / total,
            "us_per_call": e.self_cpu_time_total / max(e.count, 1),
        }
        for e in top
    ]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as shaped:
        trainer.train_epoch(part.take(slice(0, args.batch * 2)), 4)
    averages = shaped.key_averages(group_by_input_shape=True)

    batch = part.take(slice(0, args.batch))
    model = trainer.model.train()
    with FlopCounterMode(display=False) as flops:
        trainer._forward_step(batch, False).total.backward()
    flops_per_sample = flops.get_total_flops() / args.batch
    products = []
    for e in averages:  # (m, k, n) of every 2-d matrix product of the step
        operands = {"aten::mm": e.input_shapes[:2], "aten::addmm": e.input_shapes[1:3]}
        pair = operands.get(e.key)
        if pair and len(pair) == 2 and all(len(s) == 2 for s in pair):
            products.append((pair[0][0], pair[0][1], pair[1][1]))
    m, k, n = max(products, key=lambda s: s[0] * s[1] * s[2], default=(args.batch, 128, 256))
    rate = _matmul_rate(m, k, n)
    parameters = [p for p in model.parameters() if p.requires_grad]
    state_bytes = sum(p.numel() * p.element_size() for p in parameters)
    # Adam reads parameter, gradient and two moments and writes parameter and moments
    step_bytes = 7 * state_bytes
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "model": subject,
        "batch_size": args.batch,
        "precision": args.precision,
        "samples_per_second": samples_per_second,
        "step_ms": 1e3 * len(part) / n_batches / samples_per_second,
        "flops_per_sample": flops_per_sample,
        "matmul_shape": [m, k, n],
        "matmul_flops_per_second": rate,
        "compute_bound_samples_per_second": rate / flops_per_sample,
        "parameter_tensors": len(parameters),
        "parameters": sum(p.numel() for p in parameters),
        "optimizer_bytes_per_step": step_bytes,
        "operators": operators,
        "reproduce": reproduce_line("profile_training.py"),
    }
    lines = [
        f"# Where the time goes: ours, {subject}, batch {args.batch}, {args.precision}",
        "",
        f"Machine: {result['machine']}, torch threads {result['torch_threads']}. "
        f"{samples_per_second:,.0f} samples/s ({result['step_ms']:.2f} ms a step) over "
        f"{n_batches} batches of {source}.",
        "",
        f"- {flops_per_sample / 1e3:,.0f} kFLOP a training sample (forward and backward); "
        f"this machine's {m}x{k} @ {k}x{n} product runs at {rate / 1e9:,.1f} GFLOP/s, so a "
        f"step doing nothing but its products at that speed would train "
        f"{result['compute_bound_samples_per_second']:,.0f} samples/s (the compute bound).",
        f"- {result['parameters']:,} parameters in {len(parameters)} tensors: Adam moves "
        f"{step_bytes / 1e6:.1f} MB a step, {step_bytes / args.batch / 1e3:.1f} kB a sample.",
        "",
        "| operator | calls a step | share of CPU time | us a call |",
        "|---|---:|---:|---:|",
    ]
    for o in operators:
        lines.append(
            f"| {o['operator']} | {o['calls_per_step']:.1f} "
            f"| {o['share']:.1%} | {o['us_per_call']:,.0f} |"
        )
    lines += ["", result["reproduce"]]
    suffix = "" if args.precision == "float32" else f"_{args.precision}"
    name = f"profile_training_{subject}_{args.batch}{suffix}"
    write_results(name, result, "\n".join(lines))


if __name__ == "__main__":
    main()
