"""Every loss weighting strategy, and a small grid of static weights, on MovieLens-100K.

Runs `recsys_mtl.sweep.run_sweep` (the engine of `recsys-mtl sweep`) twice over the
pipelines/movielens-100k.toml settings plus `--set` overrides: once over every
registered strategy x seeds, once over a static-weight grid (default: the rating
weight) x seeds. Δm is each run's mean relative gain over the single-task baselines of
the same seed (click AUC, purchase AUC, rating RMSE with the sign flipped), on
validation (the selected epoch's metrics: the best static and dynamic settings are
chosen by it) and on test (reported for the chosen ones, never chosen on); the
baselines come from a results file of benchmarks/architectures_movielens.py run with the
same overrides (`--baselines`), or are trained here.

    .venv/bin/python benchmarks/weighting_movielens.py --set model.embedding_dim=32 \\
        'model.hidden_dims=[64]' model.output_dim=32 \\
        --baselines benchmarks/results/architectures_movielens100k_static_items.json

Writes benchmarks/results/weighting_movielens100k.{json,md}. Run it alone: two torch
processes on two cores slow each other down many times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from architectures_movielens import MAIN, delta_m
from architectures_movielens import run as run_architectures
from movielens_common import (
    BENCHMARK_EVALUATION,
    METRICS,
    PIPELINE,
    RESULTS,
    add_common_arguments,
    reproduce_line,
)

OUTPUT = "pipeline.output_dir='data/benchmarks/weighting-ml100k/{}'"


def _baselines(
    path: str | None, seeds: list[int], overrides: list[str], name: str
) -> dict[int, dict]:
    """seed -> single-task metrics (click, purchase, rating models); trained here unless
    `path` holds them, and then saved as results/<name>_baselines.json for reuse."""
    if path:
        saved = json.loads(Path(path).read_text())
        if saved["overrides"] != overrides:
            raise SystemExit(f"{path} was run with overrides {saved['overrides']}, not {overrides}")
        found = {r["seed"]: r["metrics"] for r in saved["runs"] if r["model"] == "single-task"}
    else:
        result = run_architectures(seeds, [], overrides, True, "weighting-ml100k-baselines")
        saved_path = RESULTS / f"{name}_baselines.json"
        saved_path.write_text(json.dumps(result, indent=2, default=str))
        print(f"single-task baselines saved to {saved_path}", flush=True)
        found = {r["seed"]: r["metrics"] for r in result["runs"] if r["model"] == "single-task"}
    no_validation = [s for s, m in found.items() if "val/click_auc" not in m]
    if no_validation:
        raise SystemExit(
            f"the baselines of seeds {no_validation} have no validation metrics (an older "
            "results file): leave out --baselines to train them here"
        )
    missing = [s for s in seeds if s not in found]
    if missing:
        raise SystemExit(f"no single-task baselines for seeds {missing}")
    return found


def _sweep(overrides: list[str], grid: dict[str, list[str]], folder: str) -> list[dict[str, Any]]:
    from recsys_mtl.sweep import run_sweep

    result = run_sweep(
        PIPELINE,
        [
            *overrides,
            OUTPUT.format(folder),
            "tracking.enabled=false",
            "training.progress=false",
            *BENCHMARK_EVALUATION,
        ],
        grid,
    )
    return result.runs.to_dicts()


def _mean_std(values: list[float], digits: int = 4, sign: str = "") -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{sign}.{digits}f} ± {spread:.{digits}f}"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: metric means, Δm mean and std, mean train seconds."""
    settings: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        settings.setdefault(run["setting"], []).append(run)
    rows = []
    for setting, group in settings.items():
        deltas = [r["delta_m"] for r in group]
        validation = [r["val_delta_m"] for r in group]
        rows.append(
            {
                "setting": setting,
                "kind": group[0]["kind"],
                "metrics": {m: _mean_std([r[m] for r in group if m in r]) for m in METRICS},
                "delta_m": statistics.fmean(deltas),
                "delta_m_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
                "val_delta_m": statistics.fmean(validation),
                "val_delta_m_std": statistics.stdev(validation) if len(validation) > 1 else 0.0,
                "train_seconds": statistics.fmean(r["train_seconds"] for r in group),
            }
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Loss weighting strategies on MovieLens-100K",
        "",
        f"Overrides: {result['overrides'] or 'none'}. Seeds {result['seeds']}; mean ± std "
        "over seeds. Δm: mean relative gain over the single-task baselines of the same seed "
        "on click AUC, purchase AUC and rating RMSE (%); validation Δm is the same on the "
        "selected epoch's validation metrics, what the best settings are chosen on (the "
        "test columns are reported, never chosen on). Train s: seconds of training "
        "(2 cores).",
        "",
        "| weighting | "
        + " | ".join(m.split("/")[1] for m in METRICS)
        + " | validation Δm % | test Δm % | train s |",
        "|---|" + "---|" * (len(METRICS) + 3),
    ]
    for row in result["summary"]:
        cells = [row["metrics"][m] for m in METRICS]
        chosen = f"{row['val_delta_m']:+.2f} ± {row['val_delta_m_std']:.2f}"
        delta = f"{row['delta_m']:+.2f} ± {row['delta_m_std']:.2f}"
        lines.append(
            f"| {row['setting']} | " + " | ".join(cells) + f" | {chosen} | {delta} | "
            f"{row['train_seconds']:.0f} |"
        )
    verdict = result["verdict"]
    lines += [
        "",
        f"Chosen on validation Δm: the static setting `{verdict['best_static']}` and the "
        f"dynamic strategy `{verdict['best_dynamic']}`. Their test Δm: "
        f"{verdict['best_static_delta_m']:+.2f} ± "
        f"{verdict['best_static_std']:.2f} and {verdict['best_dynamic_delta_m']:+.2f} ± "
        f"{verdict['best_dynamic_std']:.2f}. {verdict['text']}",
        "",
        result["reproduce"],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from recsys_mtl.objectives.weighting import WEIGHTING

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "weighting_movielens100k")
    parser.add_argument("--strategies", nargs="+", default=list(WEIGHTING))
    parser.add_argument(
        "--static-grid",
        default="tasks.rating.weight=0.25,1.0,2.0",
        help="KEY=V1,V2 of static settings to try besides the pipeline's own weights",
    )
    parser.add_argument("--baselines", help="architectures_movielens.py results JSON")
    args = parser.parse_args()
    from recsys_mtl.sweep import parse_grid

    start = time.perf_counter()
    seeds = [str(s) for s in args.seeds]
    RESULTS.mkdir(parents=True, exist_ok=True)
    baselines = _baselines(args.baselines, args.seeds, args.overrides, args.name)
    runs = []
    strategies = {"objectives.weighting": args.strategies, "pipeline.seed": seeds}
    for run in _sweep(args.overrides, strategies, "strategies"):
        name = run["objectives.weighting"]
        kind = "static" if name == "static" else "dynamic"
        runs.append({**run, "setting": name, "kind": kind})
    if args.static_grid:
        grid = parse_grid([args.static_grid])
        key = next(iter(grid))
        for run in _sweep(args.overrides, {**grid, "pipeline.seed": seeds}, "static-grid"):
            runs.append({**run, "setting": f"static, {key}={run[key]}", "kind": "static"})
    for run in runs:
        run["delta_m"] = delta_m(run, baselines[int(run["pipeline.seed"])])
        run["val_delta_m"] = delta_m(run, baselines[int(run["pipeline.seed"])], "val")
    summary = summarise(runs)
    # chosen on validation; the test Δm of the chosen ones is reported once
    static = max((r for r in summary if r["kind"] == "static"), key=lambda r: r["val_delta_m"])
    dynamic = max((r for r in summary if r["kind"] == "dynamic"), key=lambda r: r["val_delta_m"])
    gap = dynamic["delta_m"] - static["delta_m"]
    noise = max(dynamic["delta_m_std"], static["delta_m_std"])
    text = (
        f"The best dynamic strategy beats the best static weights by {gap:+.2f} points of Δm"
        if gap > noise
        else f"No dynamic strategy beats the best static weights beyond the seed spread "
        f"(difference {gap:+.2f} points of Δm, spread {noise:.2f})"
    ) + "."
    result = {
        "seeds": args.seeds,
        "overrides": args.overrides,
        "static_grid": args.static_grid,
        "main_metrics": {task: metric for task, (metric, _, _) in MAIN.items()},
        "runs": runs,
        "baselines": {str(k): v for k, v in baselines.items()},
        "summary": summary,
        "verdict": {
            "best_static": static["setting"],
            "best_static_delta_m": static["delta_m"],
            "best_static_std": static["delta_m_std"],
            "best_dynamic": dynamic["setting"],
            "best_dynamic_delta_m": dynamic["delta_m"],
            "best_dynamic_std": dynamic["delta_m_std"],
            "text": text,
        },
        "seconds": time.perf_counter() - start,
        "reproduce": reproduce_line("weighting_movielens.py"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
