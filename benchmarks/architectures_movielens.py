"""Every sharing architecture against single-task baselines on MovieLens-100K, over seeds.

For each seed: the features of pipelines/movielens-100k.toml are built once; then every
registered architecture is trained and evaluated, and the single-task baselines are
trained by the same code: `model.sharing = "none"` with the tasks decoupled (purchase
without the click funnel, rating without purchase's representation), i.e. one model per
task, once per task with early stopping on that task's validation metric.

Δm (Maninis et al., 2019) is the mean over the three tasks of the relative gain of the
multi-task model over its single-task baseline on the task's main metric (click AUC,
purchase AUC, rating RMSE with the sign flipped), per seed; reported as mean ± std.

    .venv/bin/python benchmarks/architectures_movielens.py            # needs data/raw/ml-100k
    .venv/bin/python benchmarks/architectures_movielens.py --seeds 42 --sharing hard mmoe

Writes benchmarks/results/architectures_movielens100k.{json,md}. Run it alone: two torch
processes on two cores slow each other down many times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from movielens_common import (
    BENCHMARK_EVALUATION,
    METRICS,
    PIPELINE,
    RESULTS,
    add_common_arguments,
    reproduce_line,
)

TARGETS = {
    "test/click_auc": 0.87,
    "test/purchase_auc": 0.89,
    "test/purchase_auc_given_click": 0.80,
    "test/rating_rmse": 0.93,
    "test/recall@10": 0.15,
    "test/ndcg@10": 0.18,
}
# task -> (main metric, higher is better, baseline run's early-stopping monitor)
MAIN = {
    "click": ("test/click_auc", True, "val/click_auc"),
    "purchase": ("test/purchase_auc", True, "val/purchase_auc"),
    "rating": ("test/rating_rmse", False, "val/rating_rmse"),
}
SINGLE_TASK = ["model.sharing='none'", "tasks.purchase.depends_on=''", "tasks.rating.input_from=''"]


def _config(seed: int, overrides: list[str], folder: str = "architectures-ml100k") -> Any:
    from recsys_mtl.config import load_config

    return load_config(
        PIPELINE,
        [
            *overrides,
            f"pipeline.seed={seed}",
            f"pipeline.output_dir='data/benchmarks/{folder}/{seed}'",
            "tracking.enabled=false",
            *BENCHMARK_EVALUATION,
            "training.progress=false",
        ],
    )


def _train_and_evaluate(config: Any, features: Any) -> tuple[dict[str, float], float, int]:
    from recsys_mtl.pipeline import evaluate_stage, index_stage, train_stage
    from recsys_mtl.sweep import selected_validation

    recommender, result = train_stage(config, features)
    index_stage(config, recommender)
    metrics = evaluate_stage(config, recommender, features)
    return {**selected_validation(result), **metrics}, result.seconds, result.best_epoch


def delta_m(multi: dict[str, float], single: dict[str, float], split: str = "test") -> float:
    """Mean relative gain (in %) over the tasks' main metrics on `split` (test, or val:
    the selected epoch's validation metrics, what a setting is chosen on)."""
    gains = []
    for metric, higher, _ in MAIN.values():
        metric = metric.replace("test/", f"{split}/", 1)
        sign = 1.0 if higher else -1.0
        gains.append(sign * (multi[metric] - single[metric]) / single[metric])
    return 100.0 * sum(gains) / len(gains)


def run(
    seeds: list[int],
    sharing: list[str],
    extra: list[str],
    baselines: bool = True,
    folder: str = "architectures-ml100k",
) -> dict[str, Any]:
    """Train every `sharing` option (and the single-task baselines) per seed; runs write
    under data/benchmarks/<folder>/<seed>."""
    from recsys_mtl.pipeline import features_stage

    runs: list[dict[str, Any]] = []
    for seed in seeds:
        features = features_stage(_config(seed, extra, folder))
        single: dict[str, float] = {}
        for task, (metric, _, monitor) in MAIN.items() if baselines else ():
            config = _config(seed, [*extra, *SINGLE_TASK, f"training.monitor='{monitor}'"], folder)
            metrics, seconds, epoch = _train_and_evaluate(config, features)
            single[metric] = metrics[metric]
            validation = metric.replace("test/", "val/", 1)
            single[validation] = metrics[validation]
            if task == "click":  # the click model is also the baseline's retriever
                for key in ("test/recall@10", "test/ndcg@10"):
                    single[key] = metrics[key]
            runs.append(
                {
                    "seed": seed,
                    "model": f"single-task {task}",
                    "seconds": seconds,
                    "best_epoch": epoch,
                    "metrics": metrics,
                }
            )
            print(
                f"seed {seed} single-task {task}: {metric} {metrics[metric]:.4f} ({seconds:.0f} s)",
                flush=True,
            )
        if baselines:
            runs.append({"seed": seed, "model": "single-task", "metrics": single})
        for name in sharing:
            config = _config(seed, [*extra, f"model.sharing='{name}'"], folder)
            metrics, seconds, epoch = _train_and_evaluate(config, features)
            runs.append(
                {
                    "seed": seed,
                    "model": name,
                    "seconds": seconds,
                    "best_epoch": epoch,
                    "metrics": metrics,
                    "delta_m": delta_m(metrics, single) if baselines else None,
                    "val_delta_m": delta_m(metrics, single, "val") if baselines else None,
                }
            )
            shown = " ".join(f"{m.split('/')[1]} {metrics[m]:.4f}" for m in METRICS)
            print(f"seed {seed} {name}: {shown} ({seconds:.0f} s)", flush=True)
    return {"seeds": seeds, "overrides": extra, "runs": runs, "targets": TARGETS}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def _delta_cell(deltas: list[float]) -> str:
    if not deltas:
        return "—"
    spread = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
    return f"{statistics.fmean(deltas):+.2f} ± {spread:.2f}"


def markdown(result: dict[str, Any]) -> str:
    models = list(dict.fromkeys(r["model"] for r in result["runs"] if "delta_m" in r))
    if any(r["model"] == "single-task" for r in result["runs"]):
        models.insert(0, "single-task")
    lines = [
        "# Sharing architectures on MovieLens-100K",
        "",
        f"Overrides: {result['overrides'] or 'none'}. "
        f"Seeds {result['seeds']}; mean ± std over seeds. Per-user temporal split, 4 uniform "
        "negatives per positive, purchase = rating >= 4; history read as the served bundle "
        "reads it (`features.freshness`), so each test metric is what `recsys-mtl evaluate "
        "--model <bundle> --input <test split>` gives. Δm: mean relative gain over the "
        "single-task baselines on click AUC, purchase AUC and rating RMSE (%), on validation "
        "(each task at its selected epoch: what a model is chosen on) and on test (reported, "
        "not chosen on). Train s: seconds of training (2 cores).",
        "",
        "| model | "
        + " | ".join(m.split("/")[1] for m in METRICS)
        + " | validation Δm % | test Δm % | train s |",
        "|---|" + "---|" * (len(METRICS) + 3),
    ]
    chosen: tuple[float, str] | None = None
    for model in models:
        rows = [r for r in result["runs"] if r["model"] == model]
        cells = [_mean_std([r["metrics"][m] for r in rows if m in r["metrics"]]) for m in METRICS]
        delta = _delta_cell([r["delta_m"] for r in rows if r.get("delta_m") is not None])
        val_deltas = [r["val_delta_m"] for r in rows if r.get("val_delta_m") is not None]
        val_delta = _delta_cell(val_deltas)
        if val_deltas and (chosen is None or statistics.fmean(val_deltas) > chosen[0]):
            chosen = (statistics.fmean(val_deltas), model)
        if model == "single-task":
            seconds = [
                r["seconds"] for r in result["runs"] if r["model"].startswith("single-task ")
            ]
            train = f"{sum(seconds) / len(result['seeds']):.0f} (3 models)"
        else:
            train = f"{statistics.fmean(r['seconds'] for r in rows):.0f}"
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {val_delta} | {delta} | {train} |")
    if chosen is not None:
        test = [r["delta_m"] for r in result["runs"] if r["model"] == chosen[1]]
        lines += [
            "",
            f"Chosen on validation Δm: **{chosen[1]}** ({chosen[0]:+.2f} %); its test Δm, "
            f"reported once: {statistics.fmean(test):+.2f} %.",
        ]
    lines += [
        "",
        "Targets: "
        + ", ".join(
            f"{m.split('/')[1]} {'<=' if m.endswith('rmse') else '>='} {v}"
            for m, v in result["targets"].items()
        )
        + ".",
        "",
        reproduce_line("architectures_movielens.py"),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from recsys_mtl.model.architectures import SHARING

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "architectures_movielens100k")
    parser.add_argument("--sharing", nargs="+", default=list(SHARING))
    parser.add_argument(
        "--skip-single-task", action="store_true", help="no single-task baselines (and no Δm)"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    result = run(args.seeds, args.sharing, args.overrides, not args.skip_single_task)
    result["seconds"] = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
