"""Repeat a pipeline over seeds and report every system's metrics as mean ± std.

    recsys-mtl evaluate pipelines/movielens-100k.toml --seeds 3

Seed s runs features, training, index and evaluation with `pipeline.seed = s` into
`<output_dir>/seeds/<s>/` (one nested MLflow run each); the seeds are pipeline.seed,
+1, ... The bootstrap intervals of each run show the test set's sampling noise; the
spread over seeds shows the training's. Writes seeds.json and seeds.md under
`<output_dir>/reports/`, logged to the parent run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from recsys_mtl.atomic import write_json_atomic
from recsys_mtl.config import load_config
from recsys_mtl.evaluation.report import EVALUATION_FILE, headline_metrics, markdown_table
from recsys_mtl.tracking import NoopTracker, Tracker


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """system -> metric -> {mean, std, values} over the per-seed reports, and the
    model-minus-system differences likewise."""
    systems: dict[str, dict[str, Any]] = {}
    differences: dict[str, dict[str, Any]] = {}
    for report in reports:
        for name, entry in report["systems"].items():
            for key, value in entry["metrics"].items():
                systems.setdefault(name, {}).setdefault(key, []).append(value)
        for name, entries in report["differences"].items():
            for key, entry in entries.items():
                differences.setdefault(name, {}).setdefault(key, []).append(entry["difference"])

    def summarise(table: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, metrics in table.items():
            out[name] = {}
            for key, values in metrics.items():
                mean, std = _mean_std(values)
                out[name][key] = {"mean": mean, "std": std, "values": values}
        return out

    return {"systems": summarise(systems), "differences": summarise(differences)}


def seeds_markdown(summary: dict[str, Any], metrics: list[str], seeds: list[int]) -> str:
    rows = [["metric", "system", "mean ± std", "model - system (mean ± std)"]]
    model = next(iter(summary["systems"]))
    for metric in metrics:
        first = True
        for name, values in summary["systems"].items():
            if metric not in values:
                continue
            cell = f"{values[metric]['mean']:.4f} ± {values[metric]['std']:.4f}"
            difference = summary["differences"].get(name, {}).get(metric)
            gap = (
                f"{difference['mean']:+.4f} ± {difference['std']:.4f}"
                if difference and name != model
                else ""
            )
            rows.append([metric if first else "", name, cell, gap])
            first = False
    return (
        f"# Evaluation over seeds {seeds}\n\n"
        "Mean ± standard deviation over the seeds (each seed: its own negatives, "
        "initialisation and batch order).\n\n" + markdown_table(rows) + "\n"
    )


def evaluate_seeds(
    pipeline: str | Path,
    overrides: list[str],
    n_seeds: int,
    tracker: Tracker | None = None,
    child_tracker: Callable[[str], Any] | None = None,
) -> Path:
    """Run the pipeline once per seed and write seeds.json / seeds.md; returns the
    folder they are in."""
    from recsys_mtl.pipeline import Paths, evaluate_stage, features_stage, index_stage, train_stage

    tracker = tracker or NoopTracker()
    base = load_config(pipeline, overrides)
    first = base.pipeline.seed
    seeds = list(range(first, first + n_seeds))
    configs = [
        load_config(
            pipeline,
            [
                *overrides,
                f"pipeline.seed={seed}",
                f"pipeline.output_dir='{base.output_path / 'seeds' / str(seed)}'",
            ],
        )
        for seed in seeds
    ]
    reports = []
    for seed, config in zip(seeds, configs, strict=True):
        name = f"{base.pipeline.name}:seed={seed}"
        with child_tracker(name) if child_tracker else nullcontext(NoopTracker()) as child:
            child.log_params({**config.flat_params(), "seed": str(seed)})
            features = features_stage(config, child)
            recommender, _ = train_stage(config, features, child)
            index_stage(config, recommender, child)
            evaluate_stage(config, recommender, features, child)
        folder = Paths(config.output_path).reports
        reports.append(json.loads((folder / EVALUATION_FILE).read_text()))
    summary = aggregate(reports)
    out = Paths(base.output_path).reports
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"seeds": seeds, **summary}, out / "seeds.json")
    text = seeds_markdown(summary, headline_metrics(reports[0]), seeds)
    (out / "seeds.md").write_text(text)
    for index, (name, metrics) in enumerate(summary["systems"].items()):
        prefix = "test" if index == 0 else name
        tracker.log_metrics(
            {f"seeds/{prefix}/{key}_mean": v["mean"] for key, v in metrics.items()}
            | {f"seeds/{prefix}/{key}_std": v["std"] for key, v in metrics.items()}
        )
    tracker.log_artifact(out / "seeds.json", "reports")
    tracker.log_artifact(out / "seeds.md", "reports")
    return out
