"""The multi-task trainer: shuffled slices, weighted losses, early stopping, checkpoints."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recsys_mtl.atomic import atomic_path
from recsys_mtl.config import TaskConfig, TrainingSection
from recsys_mtl.evaluation.evaluate import metric_is_better, pointwise_metrics
from recsys_mtl.model.multitask import MultiTaskModel
from recsys_mtl.objectives.losses import task_losses
from recsys_mtl.objectives.weighting import WeightingStrategy
from recsys_mtl.tracking import NoopTracker, Tracker
from recsys_mtl.training.tensors import TensorData, predict_arrays


@dataclass
class TrainingResult:
    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class Trainer:
    """Trains a MultiTaskModel; selects the epoch with the best validation `monitor`."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: dict[str, TaskConfig],
        weighting: WeightingStrategy,
        cfg: TrainingSection,
        seed: int,
        tracker: Tracker | None = None,
        checkpoint_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.tasks = tasks
        self.weighting = weighting
        self.cfg = cfg
        self.seed = seed
        self.tracker = tracker or NoopTracker()
        self.checkpoint_dir = checkpoint_dir
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )

    def train_epoch(self, data: TensorData, epoch: int) -> dict[str, float]:
        """One pass over shuffled `data`; returns train/<task>_loss and weight/<task>."""
        self.model.train()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        sums = {name: torch.zeros(()) for name in self.tasks}
        weights: dict[str, float] = {}
        n_batches = 0
        batches = data.shuffled(generator).batches(self.cfg.batch_size)
        total_batches = -(-len(data) // self.cfg.batch_size)
        bar = tqdm(
            batches,
            total=total_batches,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not self.cfg.progress,
            unit="batch",
        )
        for batch in bar:
            outputs = self.model(batch.users, batch.items, batch.user_rows, batch.item_rows)
            log_p = self.model.log_probabilities(outputs)
            losses = task_losses(outputs, log_p, batch.labels, self.tasks)
            total, weights = self.weighting(losses)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            for name, loss in losses.items():
                sums[name] += loss.detach()
            n_batches += 1
        bar.close()
        metrics = {f"train/{n}_loss": float(s) / max(n_batches, 1) for n, s in sums.items()}
        metrics.update({f"weight/{n}": w for n, w in weights.items()})
        self.weighting.on_epoch_end({n: metrics[f"train/{n}_loss"] for n in self.tasks})
        return metrics

    def validate(self, data: TensorData) -> dict[str, float]:
        predictions = predict_arrays(self.model, data)
        metrics = pointwise_metrics(data, predictions, self.tasks)
        return {f"val/{k}": v for k, v in metrics.items()}

    def fit(self, train: TensorData, validation: TensorData) -> TrainingResult:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        best_state, best_score, best_epoch, stale = None, None, 0, 0
        history = []
        for epoch in range(1, self.cfg.epochs + 1):
            metrics = self.train_epoch(train, epoch)
            metrics.update(self.validate(validation))
            if self.cfg.monitor not in metrics:
                known = ", ".join(sorted(k for k in metrics if k.startswith("val/")))
                raise ValueError(f"training.monitor '{self.cfg.monitor}' is not one of: {known}")
            score = metrics[self.cfg.monitor]
            history.append({"epoch": epoch, **metrics})
            self.tracker.log_metrics(metrics, step=epoch)
            if best_score is None or metric_is_better(self.cfg.monitor, score, best_score):
                best_state = copy.deepcopy(self.model.state_dict())
                best_score, best_epoch, stale = score, epoch, 0
                self._checkpoint("best.pt", epoch)
            else:
                stale += 1
            self._checkpoint("last.pt", epoch)
            if self.cfg.progress:
                shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/")}
                tqdm.write(f"epoch {epoch}: {shown}")
            if stale >= self.cfg.patience:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return TrainingResult(
            best_epoch, float(best_score or 0.0), history, time.perf_counter() - start
        )

    def _checkpoint(self, name: str, epoch: int) -> None:
        if self.checkpoint_dir is None:
            return
        save_checkpoint(
            {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "weighting": self.weighting.state_dict(),
            },
            self.checkpoint_dir / name,
        )
