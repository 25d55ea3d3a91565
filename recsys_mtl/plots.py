"""Plots written as PNG artifacts (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
