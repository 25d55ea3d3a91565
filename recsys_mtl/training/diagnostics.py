"""Training diagnostics written beside the model: the task relation matrix and the gate
utilisation of mixture-of-experts models, as JSON and heatmaps, and the task losses,
weights and relations over training as line charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys_mtl.atomic import write_json_atomic
from recsys_mtl.plots import heatmap, line_panels
from recsys_mtl.training.relations import suggest_task_groups
from recsys_mtl.training.trainer import TrainingResult


def write_training_diagnostics(result: TrainingResult, folder: Path) -> list[Path]:
    """Write task_relations.{json,png} and gate_utilisation.json plus one heatmap per
    gate set, for the selected epoch; returns the written paths."""
    written: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_dir():  # a previous run's files (e.g. another architecture's gates)
        for old in [
            *folder.glob("task_relations*"),
            *folder.glob("gate_utilisation*"),
            *folder.glob("weighting.*"),
        ]:
            old.unlink()
    written += write_weighting_diagnostics(result, folder)
    epoch = result.best_epoch
    relation = result.relations.get(epoch)
    if relation is not None:
        matrix = np.asarray(relation)
        report: dict[str, Any] = {
            "epoch": epoch,
            "tasks": result.tasks,
            "matrix": relation,
            "suggested_task_groups": suggest_task_groups(matrix, result.tasks),
            "per_epoch": {str(e): m for e, m in result.relations.items()},
            "meaning": "cosine of the task gradients on the shared embeddings' output, "
            "averaged over the measured batches of the epoch",
        }
        write_json_atomic(report, folder / "task_relations.json")
        heatmap(
            matrix,
            result.tasks,
            result.tasks,
            f"Task relations (gradient cosine, epoch {epoch})",
            folder / "task_relations.png",
            diverging=True,
        )
        written += [folder / "task_relations.json", folder / "task_relations.png"]
    gates = result.gates.get(epoch) or {}
    if gates:
        write_json_atomic({"epoch": epoch, "gates": gates}, folder / "gate_utilisation.json")
        written.append(folder / "gate_utilisation.json")
        for key, stats in gates.items():
            path = folder / f"gate_utilisation_{key.replace('/', '_')}.png"
            heatmap(
                stats["matrix"],
                stats["rows"],
                stats["columns"],
                f"Gate utilisation, {key} (epoch {epoch})",
                path,
            )
            written.append(path)
    return written


def write_weighting_diagnostics(result: TrainingResult, folder: Path) -> list[Path]:
    """weighting.png: per-task losses and weights per epoch and smoothed per step, and
    the task relations (gradient cosines) per epoch; task_relations_over_time.json."""
    history = [h for h in result.history if "epoch" in h]
    if not history:
        return []
    epochs = [h["epoch"] for h in history]

    def per_epoch(prefix: str, suffix: str = "") -> dict[str, tuple[list[float], list[float]]]:
        return {
            task: (epochs, [h[f"{prefix}{task}{suffix}"] for h in history])
            for task in result.tasks
            if all(f"{prefix}{task}{suffix}" in h for h in history)
        }

    def per_step(prefix: str) -> dict[str, tuple[list[float], list[float]]]:
        return {
            task: (
                [s["step"] for s in result.steps],
                [s[f"{prefix}{task}"] for s in result.steps],
            )
            for task in result.tasks
            if result.steps and all(f"{prefix}{task}" in s for s in result.steps)
        }

    pairs = [(a, b) for i, a in enumerate(result.tasks) for b in result.tasks[i + 1 :]]
    relation_epochs = sorted(result.relations)
    relations = {
        f"{a}-{b}": (
            relation_epochs,
            [
                result.relations[e][result.tasks.index(a)][result.tasks.index(b)]
                for e in relation_epochs
            ],
        )
        for a, b in pairs
    }
    panels = [
        ("training loss per epoch", "epoch", per_epoch("train/", "_loss")),
        ("weight per epoch (last batch)", "epoch", per_epoch("weight/")),
        ("training loss, smoothed per step", "step", per_step("step/loss/")),
        ("weight, smoothed per step", "step", per_step("step/weight/")),
        ("task relation (gradient cosine) per epoch", "epoch", relations),
    ]
    panels = [p for p in panels if p[2]]
    path = folder / "weighting.png"
    line_panels(panels, "Task losses, weights and relations", path)
    written = [path]
    if relation_epochs:
        write_json_atomic(
            {
                "tasks": result.tasks,
                "per_epoch": {str(e): result.relations[e] for e in relation_epochs},
            },
            folder / "task_relations_over_time.json",
        )
        written.append(folder / "task_relations_over_time.json")
    return written
