"""Sweeps: every combination of a grid of settings, one nested MLflow run each, a
comparison table and the Pareto front of the task metrics on validation.

    recsys-mtl sweep pipelines/movielens-100k.toml \
        --grid objectives.weighting=static,uncertainty,famo --grid pipeline.seed=42,43,44

Every combination's config is validated before anything runs. Features are built once
per distinct features/source/seed setting and shared by the runs that agree on them.
With `pipeline.seed` in the grid the table also has one row per setting with the mean
and standard deviation over seeds, and the Pareto front is taken over those means.
The front is chosen on *validation* (each task's metric at the epoch the trainer
selected for it) and the test metrics are reported beside it, so a setting picked from
the front was not picked by its test score.
Outputs (under `<output_dir>/sweep/`): runs.csv (one row per run), summary.csv and
summary.md (per setting), pareto.png, sweep.json; all logged to the parent run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recsys_mtl.atomic import atomic_path, write_json_atomic
from recsys_mtl.config import PipelineConfig, load_config
from recsys_mtl.errors import RecsysError
from recsys_mtl.evaluation.evaluate import metric_higher_is_better
from recsys_mtl.tracking import NoopTracker, Tracker

if TYPE_CHECKING:
    from recsys_mtl.training.trainer import TrainingResult

SEED_KEY = "pipeline.seed"


def split_values(text: str) -> list[str]:
    """'a,b,[1,2]' -> ['a', 'b', '[1,2]']: commas inside brackets or quotes stay."""
    values, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(grid: list[str]) -> dict[str, list[str]]:
    """['key=v1,v2', ...] -> {key: [v1, v2]} (values as written, parsed like --set)."""
    parsed: dict[str, list[str]] = {}
    for text in grid:
        key, sep, raw = text.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not key or not values or any(v == "" for v in values):
            raise RecsysError(
                f"--grid '{text}' is not KEY=VALUE1,VALUE2,...",
                fix="write e.g. --grid objectives.weighting=static,famo",
            )
        if key in parsed:
            raise RecsysError(f"--grid names '{key}' twice", fix="give each key one --grid")
        parsed[key] = values
    return parsed


def task_metrics(config: PipelineConfig, split: str = "test") -> list[str]:
    """The main metric of every task on `split`: AUC for binary tasks, RMSE for regression."""
    return [
        f"{split}/{name}_auc" if task.kind == "binary" else f"{split}/{name}_rmse"
        for name, task in config.tasks.items()
    ]


def selected_validation(result: TrainingResult) -> dict[str, float]:
    """The validation metrics of the selected epoch; a task selected at its own epoch
    (per-task selection) reads its `val/<task>_*` metrics from that epoch."""
    by_epoch = {int(row["epoch"]): row for row in result.history if "epoch" in row}
    chosen = by_epoch.get(result.best_epoch, {})
    values = {k: float(v) for k, v in chosen.items() if k.startswith("val/")}
    for task, epoch in result.task_epochs.items():
        row = by_epoch.get(epoch, {})
        prefix = f"val/{task}_"
        values.update({k: float(v) for k, v in row.items() if k.startswith(prefix)})
    return values


def pareto_front(values: np.ndarray, higher_is_better: list[bool]) -> np.ndarray:
    """(N,) bool: rows of `values` (N, M) that no other row dominates (at least as good
    on every metric and better on one). NaN rows are never on the front."""
    signed = np.where(higher_is_better, values, -values)  # larger is better everywhere
    valid = ~np.isnan(signed).any(axis=1)
    at_least = (signed[:, None, :] >= signed[None, :, :]).all(axis=2)  # [j, i]: j >= i
    better = (signed[:, None, :] > signed[None, :, :]).any(axis=2)
    dominates = at_least & better & valid[:, None]
    return valid & ~dominates.any(axis=0)


@dataclass
class SweepResult:
    runs: pl.DataFrame
    summary: pl.DataFrame
    front: list[str]
    folder: Path


def _setting_label(keys: list[str], values: dict[str, str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in keys) or "base"


def sweep_configs(
    pipeline: str | Path, overrides: list[str], grid: dict[str, list[str]]
) -> list[tuple[dict[str, str], PipelineConfig]]:
    """Every combination of the grid with its validated config (each writes under
    `<output_dir>/sweep/run-NNN`); a bad combination is an error before anything runs."""
    from recsys_mtl.pipeline import check_registered

    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    folder = load_config(pipeline, overrides).output_path / "sweep"
    prepared = []
    for i, combo in enumerate(combos):
        try:
            config = load_config(pipeline, [*overrides, *(f"{k}={v}" for k, v in combo.items())])
            check_registered(config)
        except RecsysError as exc:
            exc.where = f"sweep combination {combo}" + (f", {exc.where}" if exc.where else "")
            raise
        run_dir = str(folder / f"run-{i:03d}")
        pipeline_section = dataclasses.replace(config.pipeline, output_dir=run_dir)
        # The single-task baselines do not depend on the grid: `recsys-mtl evaluate` has them.
        baselines = [b for b in config.evaluation.baselines if b != "single_task"]
        evaluation = dataclasses.replace(config.evaluation, baselines=baselines)
        prepared.append(
            (
                combo,
                dataclasses.replace(config, pipeline=pipeline_section, evaluation=evaluation),
            )
        )
    return prepared


def run_sweep(
    pipeline: str | Path,
    overrides: list[str],
    grid: dict[str, list[str]],
    tracker: Tracker | None = None,
    child_tracker: Any = None,
    prepared: list[tuple[dict[str, str], PipelineConfig]] | None = None,
) -> SweepResult:
    """Run every combination (`prepared`, or `sweep_configs` of the arguments);
    `child_tracker(name)` gives a context-managed tracker per run (nested under the
    parent `tracker`), or None for no tracking."""
    from recsys_mtl.pipeline import evaluate_stage, features_stage, index_stage, train_stage

    tracker = tracker or NoopTracker()
    keys = list(grid)
    prepared = prepared if prepared is not None else sweep_configs(pipeline, overrides, grid)
    base = load_config(pipeline, overrides)
    folder = base.output_path / "sweep"
    tracker.log_params({"sweep.grid": json.dumps(grid), "sweep.runs": len(prepared)})
    features_cache: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    metrics_names = task_metrics(base)
    validation_names = task_metrics(base, "val")
    for i, (combo, config) in enumerate(prepared):
        label = _setting_label(keys, combo)
        print(f"[sweep {i + 1}/{len(prepared)}] {label}", flush=True)
        key = json.dumps(
            [
                dataclasses.asdict(config.features),
                dataclasses.asdict(config.source),
                config.pipeline.seed,
            ],
            sort_keys=True,
            default=str,
        )
        start = time.perf_counter()
        context = child_tracker(f"{base.pipeline.name}:{label}") if child_tracker else nullcontext()
        with context as child:
            child = child or NoopTracker()
            child.log_params(config.flat_params())
            if key not in features_cache:
                features_cache[key] = features_stage(config, child)
            features = features_cache[key]
            recommender, result = train_stage(config, features, child)
            index_stage(config, recommender, child)
            metrics = evaluate_stage(config, recommender, features, child)
        validation = selected_validation(result)
        rows.append(
            {
                "run": i,
                **combo,
                **{m: validation.get(m, float("nan")) for m in validation_names},
                **{m: validation[m] for m in ("val/recall@10", "val/ndcg@10") if m in validation},
                **{m: metrics.get(m, float("nan")) for m in metrics_names},
                **{
                    k: v
                    for k, v in metrics.items()
                    if k.startswith("test/") and not k.endswith(("_low", "_high"))
                },
                "best_epoch": result.best_epoch,
                "train_seconds": result.seconds,
                "seconds": time.perf_counter() - start,
            }
        )
    runs = pl.DataFrame(rows)
    reported = [c for c in runs.columns if c.startswith(("val/", "test/"))]
    summary, front = summarise(runs, keys, reported)
    _write(folder, runs, summary, front, keys, validation_names, grid)
    for name in ("summary.md", "summary.csv", "runs.csv", "pareto.png", "sweep.json"):
        tracker.log_artifact(folder / name, "sweep")
    return SweepResult(runs, summary, front, folder)


def summarise(
    runs: pl.DataFrame, keys: list[str], metrics: list[str]
) -> tuple[pl.DataFrame, list[str]]:
    """One row per setting (the grid keys other than the seed): mean and std of every
    metric over seeds, the run count, mean train seconds and `pareto` (not dominated on
    the means of the task metrics on validation, `val/<task>_auc|rmse`)."""
    settings = [k for k in keys if k != SEED_KEY]
    labels = [_setting_label(settings, row) for row in runs.select(settings).to_dicts()]
    summary = (
        runs.with_columns(pl.Series("setting", labels or ["base"] * runs.height))
        .group_by("setting", maintain_order=True)
        .agg(
            *[pl.col(k).first() for k in settings],
            pl.len().alias("runs"),
            *[pl.col(m).mean().alias(m) for m in metrics],
            *[pl.col(m).std().alias(f"{m} std") for m in metrics],
            pl.col("train_seconds").mean(),
        )
    )
    labels = summary["setting"].to_list()
    task = [m for m in metrics if m.startswith("val/") and m.endswith(("_auc", "_rmse"))]
    front_mask = pareto_front(
        summary.select(task).to_numpy().astype(np.float64),
        [metric_higher_is_better(m) for m in task],
    )
    summary = summary.with_columns(pl.Series("pareto", front_mask))
    return summary, [label for label, on in zip(labels, front_mask, strict=True) if on]


def _markdown(summary: pl.DataFrame, metrics: list[str]) -> str:
    header = ["setting", "runs", *metrics, "train s", "Pareto"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dicts():
        cells = [str(row["setting"]), str(row["runs"])]
        for m in metrics:
            std = row.get(f"{m} std")
            cells.append(
                f"{row[m]:.4f} ± {std:.4f}"
                if std is not None and row["runs"] > 1
                else f"{row[m]:.4f}"
            )
        cells += [f"{row['train_seconds']:.0f}", "yes" if row["pareto"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(
    folder: Path,
    runs: pl.DataFrame,
    summary: pl.DataFrame,
    front: list[str],
    keys: list[str],
    task: list[str],
    grid: dict[str, list[str]],
) -> None:
    from recsys_mtl.plots import pareto_scatter

    folder.mkdir(parents=True, exist_ok=True)
    metrics = [
        c for c in summary.columns if c.startswith(("val/", "test/")) and not c.endswith(" std")
    ]
    for name, frame in (("runs.csv", runs), ("summary.csv", summary)):
        with atomic_path(folder / name) as tmp:
            frame.write_csv(tmp)
    text = (
        f"# Sweep over {', '.join(keys)}\n\n"
        + _markdown(summary, metrics)
        + "\nPareto (chosen on validation; test reported, not chosen on): not dominated on "
        + ", ".join(f"{m} ({'up' if metric_higher_is_better(m) else 'down'})" for m in task)
        + ".\n"
    )
    with atomic_path(folder / "summary.md") as tmp:
        tmp.write_text(text)
    pareto_scatter(
        summary.select(task).to_dicts(),
        summary["setting"].to_list(),
        summary["pareto"].to_list(),
        task,
        "Sweep: validation task metrics per setting",
        folder / "pareto.png",
    )
    write_json_atomic(
        {
            "grid": grid,
            "pareto_front": front,
            "summary": summary.to_dicts(),
            "runs": runs.to_dicts(),
        },
        folder / "sweep.json",
    )
