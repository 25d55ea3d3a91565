"""Plots written as PNG artifacts (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys_mtl.atomic import atomic_path


def heatmap(
    matrix: np.ndarray | Sequence[Sequence[float]],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    path: Path,
    *,
    diverging: bool = False,
) -> None:
    """An annotated heatmap; `diverging` centres the colours on zero over [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(matrix, dtype=float)
    width = max(4.0, 0.9 * len(columns) + 2.0)
    height = max(3.0, 0.6 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    limits = {"vmin": -1.0, "vmax": 1.0, "cmap": "RdBu_r"} if diverging else {"cmap": "viridis"}
    image = ax.imshow(values, aspect="auto", **limits)
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    low, high = image.get_clim()
    for (i, j), value in np.ndenumerate(values):
        # white on the dark ends of the colour map, black elsewhere
        position = (value - low) / (high - low) if high > low else 0.5
        dark = abs(value) > 0.6 if diverging else position < 0.35
        color = "white" if dark else "black"
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def line_panels(
    panels: Sequence[tuple[str, str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
    title: str,
    path: Path,
) -> None:
    """One line chart per panel: (panel title, x label, series name -> (x, y))."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7.0, 2.6 * len(panels)), squeeze=False, sharex=False
    )
    for ax, (panel_title, x_label, series) in zip(axes[:, 0], panels, strict=True):
        for name, (x, y) in series.items():
            ax.plot(list(x), list(y), label=name, marker="o" if len(x) <= 30 else None, ms=3)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    _save(fig, path)


def pareto_scatter(
    points: Sequence[dict[str, float]],
    labels: Sequence[str],
    on_front: Sequence[bool],
    metrics: Sequence[str],
    title: str,
    path: Path,
) -> None:
    """Every pair of `metrics` as a scatter of the configurations (`points`: metric ->
    value), the non-dominated ones highlighted and labelled."""
    plt = _pyplot()
    pairs = [(a, b) for i, a in enumerate(metrics) for b in metrics[i + 1 :]]
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(5.2 * max(len(pairs), 1), 4.4))
    axes = np.atleast_1d(axes)
    for ax, (x_metric, y_metric) in zip(axes, pairs, strict=False):
        for point, label, front in zip(points, labels, on_front, strict=True):
            ax.scatter(
                point[x_metric],
                point[y_metric],
                s=40 if front else 18,
                color="tab:red" if front else "tab:gray",
                zorder=3 if front else 2,
            )
            if front:
                ax.annotate(label, (point[x_metric], point[y_metric]), fontsize=7)
        ax.set_xlabel(x_metric)
        ax.set_ylabel(y_metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (red: not dominated)")
    _save(fig, path)


def calibration_panels(
    curves: dict[str, dict[str, dict[str, list[float | None]]]], title: str, path: Path
) -> None:
    """Reliability diagrams: one panel per task, one line per system (`curves`: system ->
    task -> predicted / observed per bin), the diagonal as perfect calibration."""
    plt = _pyplot()
    tasks = sorted({task for per_task in curves.values() for task in per_task})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="perfect")
        for system, per_task in curves.items():
            if task not in per_task:
                continue
            curve = per_task[task]
            pairs = [
                (p, o)
                for p, o in zip(curve["predicted"], curve["observed"], strict=True)
                if p is not None and o is not None
            ]
            if pairs:
                xs, ys = zip(*pairs, strict=True)
                ax.plot(xs, ys, marker="o", ms=3, label=system)
        ax.set_title(task)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    _save(fig, path)


def interval_panels(
    panels: Sequence[tuple[str, Sequence[str], Sequence[float], Sequence[Any]]],
    title: str,
    path: Path,
) -> None:
    """One panel per metric: a dot per system with its interval ([low, high] or None)."""
    plt = _pyplot()
    columns = min(3, max(len(panels), 1))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (metric, names, values, bounds) in zip(axes.flat, panels, strict=False):
        positions = np.arange(len(names))
        spans = [b if b and None not in b else (v, v) for v, b in zip(values, bounds, strict=True)]
        low = [v - b[0] for v, b in zip(values, spans, strict=True)]
        high = [b[1] - v for v, b in zip(values, spans, strict=True)]
        colors = ["tab:red" if i == 0 else "tab:blue" for i in range(len(names))]
        ax.errorbar(positions, values, yerr=[low, high], fmt="none", ecolor="black", capsize=3)
        ax.scatter(positions, values, color=colors, zorder=3)
        ax.set_xticks(positions, labels=list(names), rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    _save(fig, path)


def recall_speed(
    curves: dict[str, Sequence[tuple[float, float, str]]],
    title: str,
    path: Path,
    *,
    target: float | None = None,
    exact_qps: float | None = None,
) -> None:
    """Recall (x) against queries per second (y, log scale) per index: each curve is a
    list of (recall, qps, label) points, labelled with the search parameter's value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, points in curves.items():
        recall = [p[0] for p in points]
        qps = [p[1] for p in points]
        ax.plot(recall, qps, marker="o", ms=4, label=name)
        for r, q, label in points:
            ax.annotate(label, (r, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if exact_qps is not None:
        ax.axhline(exact_qps, color="tab:gray", ls="--", lw=1, label="exact scan")
    if target is not None:
        ax.axvline(target, color="tab:red", ls=":", lw=1, label=f"target recall {target:g}")
    ax.set_yscale("log")
    ax.set_xlabel("recall against exact search")
    ax.set_ylabel("queries per second (batched)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    _save(fig, path)
