"""The evaluation report: one comparison table (model, baselines, intervals, paired
differences), segments, calibration, coverage, the protocol, and PNG plots.

`write_report` writes `evaluation.json` (everything needed to render again), `report.md`
and `plots/*.png` into a folder; `render_run_report` renders them again from a finished
MLflow run's `reports/evaluation.json` artifact (`recsys-mtl report RUN_ID`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from recsys_mtl.atomic import write_json_atomic
from recsys_mtl.errors import RecsysError
from recsys_mtl.plots import calibration_panels, interval_panels, line_panels

EVALUATION_FILE = "evaluation.json"
PLOTS = "plots"


def headline_metrics(report: dict[str, Any]) -> list[str]:
    """The model's main metrics, in table order: per task AUC (and AUC among parent
    positives) or RMSE, then Recall@k and NDCG@k."""
    model = next(iter(report["systems"].values()))["metrics"]
    tasks = [k for k in model if k.endswith("_auc") or "_auc_given_" in k or k.endswith("_rmse")]
    ranking = [k for k in model if k.startswith(("recall@", "ndcg@"))]
    ranking.sort(key=lambda k: (k.split("@")[0] != "recall", int(k.split("@")[1])))
    return tasks + ranking


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _interval(bounds: Any, signed: bool = False) -> str:
    if not bounds or any(b is None or math.isnan(b) for b in bounds):
        return ""
    return f"[{_number(bounds[0], signed)}, {_number(bounds[1], signed)}]"


def comparison_rows(report: dict[str, Any], metrics: list[str] | None = None) -> list[list[str]]:
    """Rows of the comparison table: metric, system, value, interval, model - system,
    paired interval. The model's row comes first for every metric."""
    systems = report["systems"]
    model = next(iter(systems))
    level = round(100 * report.get("bootstrap", {}).get("level", 0.95))
    rows = [["metric", "system", "value", f"{level}% CI", "model - system", f"paired {level}% CI"]]
    for metric in metrics or headline_metrics(report):
        first = True
        for name, entry in systems.items():
            if metric not in entry["metrics"]:
                continue
            difference = report["differences"].get(name, {}).get(metric, {})
            rows.append(
                [
                    metric if first else "",
                    name,
                    _number(entry["metrics"][metric]),
                    _interval(entry.get("intervals", {}).get(metric)),
                    "" if name == model else _number(difference.get("difference"), True),
                    ""
                    if name == model
                    else _interval([difference.get("low"), difference.get("high")], True)
                    if "low" in difference
                    else "",
                ]
            )
            first = False
    return rows


def text_table(rows: list[list[str]]) -> str:
    """Rows as aligned plain text (first row the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _segment_rows(report: dict[str, Any], metrics: list[str]) -> list[list[str]]:
    rows = [["segment", "users", "system", *metrics]]
    for segment, entry in report["segments"].items():
        scored = [(n, v) for n, v in entry["systems"].items() if any(m in v for m in metrics)]
        label, users = f"{segment} ({entry['definition']})", str(entry["users"])
        if not scored:
            rows.append([label, users, "", *[""] * len(metrics)])
        for index, (name, values) in enumerate(scored):
            first = index == 0
            rows.append(
                [
                    label if first else "",
                    users if first else "",
                    name,
                    *[_number(values.get(m)) for m in metrics],
                ]
            )
    return rows


def _metric_table(report: dict[str, Any], keys: tuple[str, ...]) -> list[list[str]]:
    """system x every metric whose name starts or ends with one of `keys`."""
    found: list[str] = []
    for entry in report["systems"].values():
        found += [
            k
            for k in entry["metrics"]
            if (k.startswith(keys) or k.endswith(keys)) and k not in found
        ]
    if not found:
        return []
    rows = [["system", *found]]
    for name, entry in report["systems"].items():
        if any(k in entry["metrics"] for k in found):
            rows.append([name, *[_number(entry["metrics"].get(k)) for k in found]])
    return rows


def markdown_report(report: dict[str, Any], title: str) -> str:
    headline = headline_metrics(report)
    boot = report.get("bootstrap", {})
    parts = [
        f"# Evaluation: {title}",
        "",
        f"Test rows: {boot.get('rows')}; users: {boot.get('users')}; ranking users: "
        f"{boot.get('ranking_users')}. Intervals: {boot.get('resamples')} bootstrap resamples "
        "of users (a user's rows move together), percentile method; differences are paired "
        "(model and baseline scored on the same resamples). An interval that excludes 0 is "
        "a difference beyond the sampling noise of this test set.",
        "",
        "## Model and baselines",
        "",
        markdown_table(comparison_rows(report)),
        "",
        "Systems: "
        + "; ".join(f"**{n}**: {e['description']}" for n, e in report["systems"].items())
        + ".",
        "",
    ]
    secondary = [
        ("## Ranking", ("precision@", "hitrate@", "mrr@")),
        ("## Coverage and popularity of the recommendations", ("coverage@", "mean_popularity@")),
        ("## Pointwise detail", ("_gauc", "_logloss", "_mae")),
        ("## Calibration", ("_ece", "_calibration_ratio")),
    ]
    for heading, keys in secondary:
        rows = _metric_table(report, keys)
        if rows:
            parts += [heading, "", markdown_table(rows), ""]
    parts += [
        "## Segments",
        "",
        markdown_table(_segment_rows(report, headline)),
        "",
        "## Protocol",
        "",
        "```json",
        json.dumps(report.get("protocol", {}), indent=2),
        "```",
        "",
        "## Plots",
        "",
        *[f"![{p}]({PLOTS}/{p}.png)" for p in report.get("plots", [])],
        "",
    ]
    return "\n".join(parts)


def write_plots(report: dict[str, Any], training: dict[str, Any] | None, folder: Path) -> list[str]:
    """The report's PNGs into `folder`; returns their names (without .png)."""
    written = []
    if training and training.get("history"):
        history = [h for h in training["history"] if "epoch" in h]
        epochs = [h["epoch"] for h in history]
        tasks = training.get("tasks", [])
        panels = [
            (
                "training loss per task",
                "epoch",
                {
                    t: (epochs, [h[f"train/{t}_loss"] for h in history])
                    for t in tasks
                    if all(f"train/{t}_loss" in h for h in history)
                },
            )
        ]
        for task in tasks:
            series = {
                key[4:]: (epochs, [h[key] for h in history])
                for key in (f"val/{task}_auc", f"val/{task}_rmse", f"val/{task}_logloss")
                if all(key in h for h in history)
            }
            if series:
                panels.append((f"validation, {task}", "epoch", series))
        ranking = {
            key[4:]: (epochs, [h[key] for h in history])
            for key in sorted(history[0])
            if key.startswith(("val/recall@", "val/ndcg@")) and all(key in h for h in history)
        }
        if ranking:
            panels.append(("validation ranking", "epoch", ranking))
        panels = [p for p in panels if p[2]]
        if panels:
            line_panels(
                panels,
                f"Learning curves (selected epoch {training.get('best_epoch')})",
                folder / "learning_curves.png",
            )
            written.append("learning_curves")
        steps = training.get("steps") or []
        weights = {
            t: ([s["step"] for s in steps], [s[f"step/weight/{t}"] for s in steps])
            for t in tasks
            if steps and all(f"step/weight/{t}" in s for s in steps)
        }
        if not weights:
            weights = {
                t: (epochs, [h[f"weight/{t}"] for h in history])
                for t in tasks
                if all(f"weight/{t}" in h for h in history)
            }
        if weights:
            line_panels(
                [("task weight", "step" if steps else "epoch", weights)],
                "Task weights over training",
                folder / "task_weights.png",
            )
            written.append("task_weights")
    if report.get("calibration"):
        calibration_panels(
            report["calibration"], "Calibration (equal-width bins)", folder / "calibration.png"
        )
        written.append("calibration")
    curves = report.get("ranking_curves") or {}
    if curves:
        line_panels(
            [
                (f"{metric} versus K", "K", {n: (c["k"], c[metric]) for n, c in curves.items()})
                for metric in ("recall", "ndcg")
            ],
            "Full-ranking metrics versus the cut-off",
            folder / "ranking_vs_k.png",
        )
        written.append("ranking_vs_k")
    panels = []
    for metric in headline_metrics(report):
        names, values, bounds = [], [], []
        for name, entry in report["systems"].items():
            if metric in entry["metrics"]:
                names.append(name)
                values.append(entry["metrics"][metric])
                bounds.append(entry.get("intervals", {}).get(metric))
        panels.append((metric, names, values, bounds))
    if panels:
        interval_panels(
            panels, "Model and baselines (bootstrap intervals)", folder / "baselines.png"
        )
        written.append("baselines")
    return written


def write_report(
    report: dict[str, Any], training: dict[str, Any] | None, folder: Path, title: str
) -> Path:
    """evaluation.json, report.md and plots/ into `folder`; returns report.md's path."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = folder / PLOTS
    for old in plots.glob("*.png") if plots.is_dir() else []:
        old.unlink()
    report = {**report, "title": title, "training": training}
    report["plots"] = write_plots(report, training, plots)
    write_json_atomic(report, folder / EVALUATION_FILE)
    path = folder / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(markdown_report(report, title))
    tmp.replace(path)
    return path


def render_run_report(run_id: str, folder: Path, tracking_uri: str = "") -> Path:
    """Download a finished run's evaluation and render its report again into `folder`."""
    import mlflow
    from recsys_mtl.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"reports/{EVALUATION_FILE}"
        )
    except Exception as exc:  # MLflow raises several types for a missing run or artifact
        raise RecsysError(
            f"run '{run_id}' has no reports/{EVALUATION_FILE} artifact ({type(exc).__name__})",
            fix="pass the id of a run that evaluated a pipeline (`recsys-mtl run` or "
            "`recsys-mtl evaluate PIPELINE.toml` print it), with the same tracking URI",
        ) from None
    saved = json.loads(Path(local).read_text())
    return write_report(saved, saved.get("training"), folder, saved.get("title", run_id))
