"""Training diagnostics written beside the model: the task relation matrix and the gate
utilisation of mixture-of-experts models, as JSON and heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys_mtl.atomic import write_json_atomic
from recsys_mtl.plots import heatmap
from recsys_mtl.training.relations import suggest_task_groups
from recsys_mtl.training.trainer import TrainingResult


def write_training_diagnostics(result: TrainingResult, folder: Path) -> list[Path]:
    """Write task_relations.{json,png} and gate_utilisation.json plus one heatmap per
    gate set, for the selected epoch; returns the written paths."""
    written: list[Path] = []
    if folder.is_dir():  # a previous run's files (e.g. another architecture's gates)
        for old in [*folder.glob("task_relations.*"), *folder.glob("gate_utilisation*")]:
            old.unlink()
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
