"""The multi-task trainer: shuffled slices, weighted losses, early stopping, checkpoints."""

from __future__ import annotations

import copy
import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_mtl.atomic import atomic_path
from recsys_mtl.config import TaskConfig, TrainingSection
from recsys_mtl.errors import RecsysError
from recsys_mtl.evaluation.evaluate import (
    metric_higher_is_better,
    metric_is_better,
    pointwise_metrics,
)
from recsys_mtl.model.multitask import MultiTaskModel
from recsys_mtl.objectives.losses import in_batch_softmax_loss, task_losses
from recsys_mtl.objectives.weighting import WeightingStrategy
from recsys_mtl.tracking import NoopTracker, Tracker
from recsys_mtl.training.allocator import retain_freed_memory
from recsys_mtl.training.averaging import ParameterAverage
from recsys_mtl.training.distributed import SINGLE, Distributed
from recsys_mtl.training.optimizers import build_optimizers
from recsys_mtl.training.ranking_probe import RankingProbe
from recsys_mtl.training.relations import task_gradient_cosines
from recsys_mtl.training.stream import StreamedRows
from recsys_mtl.training.tensors import TensorData, predict_arrays

#: What an epoch trains on: tensors in memory, or rows streamed from Parquet shards.
TrainingRows = TensorData | StreamedRows

#: The validation metric `training.monitor_weights` combines the task metrics into.
COMBINED = "val/combined"


@dataclass
class TrainingResult:
    """The selected epoch and per-epoch records: metrics, task relation matrices (T, T)
    over `tasks`, and gate utilisation (mixtures of experts; see Sharing.gate_utilisation)."""

    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    tasks: list[str] = field(default_factory=list)
    relations: dict[int, list[list[float]]] = field(default_factory=dict)
    gates: dict[int, dict[str, Any]] = field(default_factory=dict)
    steps: list[dict[str, float]] = field(default_factory=list)
    task_epochs: dict[str, int] = field(default_factory=dict)


@dataclass
class StepOutput:
    """One batch's forward pass: the scalar to back-propagate and what is logged."""

    total: torch.Tensor
    losses: dict[str, torch.Tensor]
    weights: dict[str, float]
    relation: np.ndarray | None
    penalty: torch.Tensor | None
    retrieval: torch.Tensor | None


class _StepModule(torch.nn.Module):
    """The model and the weighting's learnable parameters as one module whose forward is
    the whole training step's loss, so DistributedDataParallel averages the gradients
    of all of them (it only sees what runs inside its forward)."""

    def __init__(self, model: MultiTaskModel, extra: list[torch.nn.Parameter], step: Any) -> None:
        super().__init__()
        self.model = model
        self.extra = torch.nn.ParameterList(extra)
        self._step = step

    def forward(self, batch: TensorData, measure_relation: bool) -> StepOutput:
        return self._step(batch, measure_relation)


@dataclass
class FitProgress:
    """Where an early-stopped fit stands after `epoch` epochs (saved in `last.pt`)."""

    epoch: int = 0
    finished: bool = False
    best_state: dict[str, torch.Tensor] | None = None
    best_score: float | None = None
    best_epoch: int = 0
    stale: int = 0
    task_best: dict[str, float] = field(default_factory=dict)
    task_epochs: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "finished": self.finished,
            "best_state": self.best_state,
            "best_score": None if self.best_score is None else float(self.best_score),
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "task_best": _plain(self.task_best),
            "task_epochs": dict(self.task_epochs),
            "history": _plain(self.history),
        }


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
        item_log_frequency: torch.Tensor | None = None,
        ranking_probe: RankingProbe | None = None,
        task_monitors: dict[str, str] | None = None,
        distributed: Distributed = SINGLE,
        device: torch.device | str = "cpu",
        fingerprint: str = "",
    ) -> None:
        """`item_log_frequency` (n_items,): log click frequency of each item in training,
        the correction of the in-batch retrieval loss (`training.retrieval_loss_weight`);
        `ranking_probe` adds val/recall@k, val/ndcg@k and val/hitrate@k to validation.

        `task_monitors` (task -> validation metric) selects an epoch per task as well:
        the averaged weights at each task's best epoch are kept in `task_states`, and
        training stops only when every task has stopped improving. With towers that
        share nothing (`model.sharing = 'none'`) that is one single-task model per task,
        each early-stopped on its own metric, for the price of one training run.

        `distributed`: this process's rank when torchrun started several; each rank
        trains on its own rows with batch_size / world_size rows per step, gradients are
        averaged by DistributedDataParallel, rank 0 validates and checkpoints.
        `device`: where the model and batches live during training ("cpu", "cuda")."""
        self.device = torch.device(device)
        self.distributed = distributed
        self.fingerprint = fingerprint  # of the configuration and features (resume check)
        self.model = model.to(self.device)
        for tensor in [*weighting.parameters(), *weighting.synced_tensors()]:
            tensor.data = tensor.data.to(self.device)
        self.tasks = tasks
        self.weighting = weighting
        self.cfg = cfg
        self.seed = seed
        self.tracker = tracker or NoopTracker()
        self.checkpoint_dir = checkpoint_dir
        self.optimizer, self.sparse_tables = build_optimizers(
            model,
            weighting.parameters(),
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            sparse_rows=cfg.sparse_embedding_rows,
        )
        self.item_log_frequency = (
            item_log_frequency.to(self.device) if item_log_frequency is not None else None
        )
        step = _StepModule(self.model, weighting.parameters(), self._forward_step)
        self.step_module: torch.nn.Module = step
        if distributed.enabled:
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = self.device.type == "cuda"
            self.step_module = DistributedDataParallel(
                step,
                device_ids=[self.device.index or 0] if on_gpu else None,
                find_unused_parameters=False,
                # The buffers are the side-feature tables and fixed offsets, the same on
                # every rank: no need to re-send them from rank 0 before every step.
                broadcast_buffers=False,
            )
        self.ranking_probe = ranking_probe
        self.average: ParameterAverage | None = None
        self.step = 0
        # sides encoded once per distinct id in training batches (set each epoch)
        self._distinct: tuple[bool, bool] = (False, False)
        self.reference: dict[str, float] | None = None
        self.smoothed: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.relations: dict[int, list[list[float]]] = {}
        self.gates: dict[int, dict[str, Any]] = {}
        self.task_monitors = task_monitors or {}
        self.task_states: dict[str, dict[str, torch.Tensor]] = {}

    def train_epoch(self, data: TrainingRows, epoch: int) -> dict[str, float]:
        """One pass over shuffled `data`; returns train/<task>_loss, weight/<task>,
        train/penalty, train/epoch_seconds and train/samples_per_second (the loop over
        the batches alone) and relation/<a>-<b> (the task relation matrix, every
        `relation_every` batches). The epoch's relation matrix and gate utilisation are
        kept in `self.relations` / `self.gates`. In a distributed run `data` is this
        rank's rows and the returned losses and relations are means over ranks."""
        self.model.train()
        self.model.sharing.reset_gate_utilisation()
        self._distinct = self._distinct_sides()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n_tasks = len(self.tasks)
        sums = torch.zeros(n_tasks + 2, device=self.device)  # tasks, penalty, retrieval
        relation_sum, n_relations = np.zeros((n_tasks,) * 2), 0
        every = self.cfg.relation_every
        weights: dict[str, float] = {}
        n_batches = 0
        batch_size = self.distributed.local_batch_size(self.cfg.batch_size)
        bar = tqdm(
            total=len(data),
            desc=f"epoch {epoch}",
            leave=False,
            disable=not (self.cfg.progress and self.distributed.is_main),
            unit="sample",
            unit_scale=True,
        )
        start, n_samples = time.perf_counter(), 0
        for batch in data.epoch_batches(generator, batch_size):
            batch = batch.to(self.device)
            step: StepOutput = self.step_module(batch, bool(every and n_batches % every == 0))
            if step.relation is not None:
                relation_sum += step.relation
                n_relations += 1
            weights = step.weights
            self.optimizer.zero_grad(set_to_none=True)
            step.total.backward()
            self.optimizer.step()
            self.weighting.after_step(lambda batch=batch: self._losses(batch))
            self.distributed.average_(self.weighting.synced_tensors())
            if self.average is not None:
                self.average.update(self.model)
            self._record_step(step.losses, weights)
            sums[:n_tasks] += torch.stack([loss.detach() for loss in step.losses.values()])
            if step.penalty is not None:
                sums[n_tasks] += step.penalty.detach()
            if step.retrieval is not None:
                sums[n_tasks + 1] += step.retrieval.detach()
            n_batches += 1
            n_samples += len(batch)
            bar.update(len(batch))
        means = self.distributed.sum_(sums) / (max(n_batches, 1) * self.distributed.world_size)
        means = means.cpu().tolist()  # waits for the device: the epoch's work is done
        seconds = time.perf_counter() - start
        bar.close()
        names = list(self.tasks)
        metrics = {f"train/{n}_loss": means[i] for i, n in enumerate(names)}
        metrics.update({f"weight/{n}": w for n, w in weights.items()})
        metrics["train/penalty"] = means[n_tasks]
        # the training loop alone (no validation, probe or checkpoint); every rank's rows
        metrics["train/epoch_seconds"] = seconds
        metrics["train/samples_per_second"] = (
            n_samples * self.distributed.world_size / max(seconds, 1e-9)
        )
        if self.cfg.retrieval_loss_weight:
            metrics["train/retrieval_loss"] = means[n_tasks + 1]
        if n_relations:
            relation = torch.from_numpy(relation_sum / n_relations)
            relation = (self.distributed.sum_(relation) / self.distributed.world_size).numpy()
            self.relations[epoch] = relation.tolist()
            metrics.update(
                {
                    f"relation/{names[a]}-{names[b]}": float(relation[a, b])
                    for a in range(len(names))
                    for b in range(a + 1, len(names))
                }
            )
        self.gates[epoch] = self.model.sharing.gate_utilisation()
        self.weighting.on_epoch_end({n: metrics[f"train/{n}_loss"] for n in self.tasks})
        self._check_ranks_agree(epoch)
        return metrics

    def _check_ranks_agree(self, epoch: int) -> None:
        """In a distributed run every rank must hold the same parameters after each epoch
        (averaged gradients, the same optimiser steps); a difference means they drifted
        apart and the run's result would depend on which rank saved it."""
        if not self.distributed.enabled:
            return
        with torch.no_grad():
            total = sum(p.double().sum() for p in self.model.parameters())
            spread = torch.stack([total, -total]).to(self.device)
            self.distributed.max_(spread)
        if float(spread[0] + spread[1]) != 0.0:
            raise RuntimeError(
                f"distributed ranks hold different parameters after epoch {epoch} "
                f"(checksums {-float(spread[1])!r} .. {float(spread[0])!r})"
            )

    def _forward_step(self, batch: TensorData, measure_relation: bool) -> StepOutput:
        """The batch's weighted multi-task loss (plus penalty and retrieval loss)."""
        with self._autocast():
            return self._weighted_losses(batch, measure_relation)

    def _autocast(self) -> AbstractContextManager[None]:
        """Inside: the step's matrix products in `training.precision`."""
        if self.cfg.precision == "float32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _distinct_sides(self) -> tuple[bool, bool]:
        """Which sides a training batch encodes once per distinct id
        (`training.deduplicate_ids`)."""
        if (
            not self.cfg.deduplicate_ids
            or self.device.type != "cpu"
            or self.weighting.reads_shared_gradients
        ):
            return False, False
        return self.model.distinct_sides()

    def _weighted_losses(self, batch: TensorData, measure_relation: bool) -> StepOutput:
        # task relations are cosines of per-row gradients: those batches stay per row
        distinct = (False, False) if measure_relation else self._distinct
        encoded = self.model.encode_batch(
            batch.users, batch.items, batch.user_rows, batch.item_rows, distinct
        )
        users, items = encoded.users, encoded.items
        vectors = None
        if self.cfg.retrieval_loss_weight:
            raw, vectors = self.model.forward_batch_and_vectors(encoded)
        else:
            raw = self.model.forward_batch(encoded)
        # the losses in float32 whatever the products ran in
        outputs = {k: v.float() for k, v in raw.items()}
        log_p = self.model.log_probabilities(outputs)
        losses = task_losses(outputs, log_p, batch.labels, self.tasks)
        relation = task_gradient_cosines(losses, (users, items)) if measure_relation else None
        total, weights = self.weighting(losses, (users, items))
        penalty = self.model.penalty()
        if penalty is not None:
            total = total + penalty
        retrieval = None
        if vectors is not None:
            retrieval = self._retrieval_loss(batch, *vectors)
            total = total + self.cfg.retrieval_loss_weight * retrieval
        return StepOutput(total, losses, weights, relation, penalty, retrieval)

    @torch.no_grad()
    def _losses(self, batch: TensorData) -> dict[str, torch.Tensor]:
        """The batch's task losses under the current model (no gradient)."""
        with self._autocast():
            outputs = self.model(batch.users, batch.items, batch.user_rows, batch.item_rows)
        outputs = {k: v.float() for k, v in outputs.items()}
        return task_losses(outputs, self.model.log_probabilities(outputs), batch.labels, self.tasks)

    def _record_step(self, losses: dict[str, torch.Tensor], weights: dict[str, float]) -> None:
        """Exponentially smoothed per-step losses and weights, kept every `log_every`
        steps in `self.steps` and logged as step/loss/<task>, step/weight/<task>."""
        self.step += 1
        values = {f"step/loss/{n}": float(loss.detach()) for n, loss in losses.items()}
        values.update({f"step/weight/{n}": float(w) for n, w in weights.items()})
        for key, value in values.items():
            old = self.smoothed.get(key)
            self.smoothed[key] = value if old is None else 0.9 * old + 0.1 * value
        if self.cfg.log_every and self.step % self.cfg.log_every == 0:
            record = {"step": float(self.step), **self.smoothed}
            self.steps.append(record)
            self.tracker.log_metrics(dict(self.smoothed), step=self.step)

    def _retrieval_loss(
        self, batch: TensorData, user_vectors: torch.Tensor, item_vectors: torch.Tensor
    ) -> torch.Tensor:
        """The in-batch softmax loss over the batch's clicked rows, from the retrievable
        head's vectors of every row (B, D + 1). The clicked rows are read with one
        `index_select` (boolean-mask indexing's backward on the CPU is an accumulating
        index_put: 231 us a call for the shipped ML-100K model)."""
        clicked = (batch.labels[self.model.retrieval_task] == 1).nonzero().squeeze(1)
        return in_batch_softmax_loss(
            user_vectors.index_select(0, clicked).float(),
            item_vectors.index_select(0, clicked).float(),
            batch.items.index_select(0, clicked),
            self.item_log_frequency,
        )

    def validate(self, data: TensorData) -> dict[str, float]:
        predictions = predict_arrays(self.model, data)
        metrics = pointwise_metrics(data, predictions, self.tasks)
        if self.ranking_probe is not None:
            metrics.update(self.ranking_probe.evaluate(self.model))
        named = {f"val/{k}": v for k, v in metrics.items()}
        if self.cfg.monitor_weights:
            named[COMBINED] = self._combined(named)
        return named

    def _combined(self, metrics: dict[str, float]) -> float:
        """Weighted mean over `monitor_weights` of each metric's relative gain over its
        first-epoch value, signed by the metric's direction (AUC up, RMSE down)."""
        missing = sorted(set(self.cfg.monitor_weights) - set(metrics))
        if missing:
            known = ", ".join(sorted(metrics))
            raise ValueError(f"training.monitor_weights names {missing}; known: {known}")
        if self.reference is None:
            self.reference = {m: metrics[m] for m in self.cfg.monitor_weights}
        total = sum(self.cfg.monitor_weights.values())
        score = 0.0
        for metric, weight in self.cfg.monitor_weights.items():
            sign = 1.0 if metric_higher_is_better(metric) else -1.0
            reference = self.reference[metric]
            gain = sign * (metrics[metric] - reference) / max(abs(reference), 1e-12)
            score += weight * gain / total
        return score

    def _validated(self, validation: TensorData | None) -> dict[str, float]:
        """Validation metrics, computed by rank 0 and sent to every rank (so early
        stopping and model selection agree); other ranks may pass None."""
        metrics = None
        if self.distributed.is_main:
            if validation is None:
                raise ValueError("rank 0 needs the validation rows")
            metrics = self.validate(validation)
        return self.distributed.broadcast(metrics)

    def fit(
        self,
        train: TrainingRows,
        validation: TensorData | None,
        resume_from: Path | None = None,
    ) -> TrainingResult:
        """Train with early stopping on `validation`. `resume_from`: a `last.pt` written
        by an earlier, interrupted fit of the same configuration; training goes on from
        the end of its epoch exactly as if it had never stopped (bitwise on CPU)."""
        self._prepare()
        train, validation = self._resident(train), self._resident(validation)
        start = time.perf_counter()
        progress = FitProgress()
        if resume_from is not None:
            progress = self._restore(resume_from)
        for epoch in range(progress.epoch + 1, self.cfg.epochs + 1):
            if progress.finished:
                break
            metrics = self.train_epoch(train, epoch)
            with self._averaged():
                metrics.update(self._validated(validation))
            for monitor in [self.cfg.monitor, *self.task_monitors.values()]:
                if monitor not in metrics:
                    known = ", ".join(sorted(k for k in metrics if k.startswith("val/")))
                    raise ValueError(f"training.monitor '{monitor}' is not one of: {known}")
            score = metrics[self.cfg.monitor]
            progress.history.append({"epoch": epoch, **metrics})
            self.tracker.log_metrics(metrics, step=epoch)
            best = progress.best_score
            if best is None or metric_is_better(self.cfg.monitor, score, best):
                with self._averaged():
                    progress.best_state = copy.deepcopy(self.model.state_dict())
                    self._checkpoint("best.pt", epoch)
                progress.best_score, progress.best_epoch, progress.stale = score, epoch, 0
            else:
                progress.stale += 1
            for task, monitor in self.task_monitors.items():
                if task not in progress.task_best or metric_is_better(
                    monitor, metrics[monitor], progress.task_best[task]
                ):
                    progress.task_best[task] = metrics[monitor]
                    progress.task_epochs[task] = epoch
                    with self._averaged():
                        self.task_states[task] = copy.deepcopy(self.model.state_dict())
            stale_tasks = [epoch - e >= self.cfg.patience for e in progress.task_epochs.values()]
            progress.epoch = epoch
            progress.finished = progress.stale >= self.cfg.patience and all(stale_tasks)
            self._checkpoint("last.pt", epoch, progress)
            if self.cfg.progress and self.distributed.is_main:
                shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/")}
                tqdm.write(f"epoch {epoch}: {shown}")
        if progress.best_state is not None:
            self.model.load_state_dict(progress.best_state)
        return TrainingResult(
            progress.best_epoch,
            float(progress.best_score or 0.0),
            progress.history,
            time.perf_counter() - start,
            list(self.tasks),
            self.relations,
            self.gates,
            self.steps,
            progress.task_epochs,
        )

    def _restore(self, path: Path) -> FitProgress:
        """Model, optimiser, weighting, averages, logs, random state and the selection
        so far from `last.pt` (read with weights_only: tensors and plain values only)."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise RecsysError(
                f"cannot read the checkpoint '{path}': {exc}",
                fix="run without --resume to start training over",
            ) from None
        if state.get("fingerprint") != self.fingerprint:
            raise RecsysError(
                f"the checkpoint '{path}' was written for another configuration or other "
                "features than this run's",
                fix="resume with the configuration that wrote it, or run without --resume "
                "to start over",
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        if self.average is not None:
            self.average.steps = state["average"]["steps"]
            self.average.shadow = state["average"]["shadow"]
        trainer = state["trainer"]
        self.step = trainer["step"]
        self.smoothed = trainer["smoothed"]
        self.steps = trainer["steps"]
        self.relations = {int(k): v for k, v in trainer["relations"].items()}
        self.gates = {int(k): v for k, v in trainer["gates"].items()}
        self.reference = trainer["reference"]
        self.task_states = trainer["task_states"]
        torch.set_rng_state(state["rng"].cpu())
        return FitProgress(**state["progress"])

    def _prepare(self) -> None:
        """Threads, the allocator, float mode and the seed every training run starts from."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        if self.cfg.retain_freed_memory:
            retain_freed_memory()
        # Weight decay drives rarely seen embedding rows towards zero; as subnormal floats
        # they made each epoch several times slower than the last (measured on ML-100K).
        torch.set_flush_denormal(True)
        torch.manual_seed(self.seed)
        decay = self.cfg.average_decay
        self.average = (
            ParameterAverage(self.model, decay, skip=set(self.sparse_tables)) if decay else None
        )

    def _resident(self, data: Any) -> Any:
        """In-memory rows moved to the training device once (then each batch is a slice
        there: no host-to-device copy per step); streamed rows and None as they are."""
        return data.to(self.device) if isinstance(data, TensorData) else data

    def _averaged(self) -> AbstractContextManager[None]:
        """Inside: the model carries its averaged parameters (when averaging is on)."""
        return self.average.applied(self.model) if self.average is not None else nullcontext()

    def refit(self, data: TrainingRows, selected: TrainingResult) -> TrainingResult:
        """Train this (fresh) model on `data` for `selected.best_epoch` epochs, with no
        validation; returns `selected`'s record with this run's time, relations and
        gates. With per-task epochs (`selected.task_epochs`) it trains until the last of
        them and keeps the weights at each in `task_states`."""
        self._prepare()
        data = self._resident(data)
        start = time.perf_counter()
        epochs = max([selected.best_epoch, *selected.task_epochs.values()])
        for epoch in range(1, epochs + 1):
            metrics = self.train_epoch(data, epoch)
            self.tracker.log_metrics({f"refit/{k}": v for k, v in metrics.items()}, step=epoch)
            for task in [t for t, e in selected.task_epochs.items() if e == epoch]:
                with self._averaged():
                    self.task_states[task] = copy.deepcopy(self.model.state_dict())
            if epoch == selected.best_epoch:
                with self._averaged():
                    best_state = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(best_state)
        self._checkpoint("refit.pt", selected.best_epoch)
        return TrainingResult(
            selected.best_epoch,
            selected.best_score,
            selected.history,
            selected.seconds + time.perf_counter() - start,
            list(self.tasks),
            self.relations,
            self.gates,
            self.steps,
            selected.task_epochs,
        )

    def _checkpoint(self, name: str, epoch: int, progress: FitProgress | None = None) -> None:
        """Write `name` (atomically). With `progress` it holds all a resumed fit needs."""
        if self.checkpoint_dir is None or not self.distributed.is_main:
            return
        state: dict[str, Any] = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
        }
        if progress is not None:
            state.update(
                {
                    "fingerprint": self.fingerprint,
                    "run_id": self.tracker.run_id,
                    "average": (
                        {"steps": self.average.steps, "shadow": self.average.shadow}
                        if self.average is not None
                        else None
                    ),
                    "trainer": {
                        "step": self.step,
                        "smoothed": _plain(self.smoothed),
                        "steps": _plain(self.steps),
                        "relations": _plain(self.relations),
                        "gates": _plain(self.gates),
                        "reference": _plain(self.reference),
                        "task_states": self.task_states,
                    },
                    "progress": progress.to_state(),
                    "rng": torch.get_rng_state(),
                }
            )
        save_checkpoint(state, self.checkpoint_dir / name)


def _plain(value: Any) -> Any:
    """Python floats, ints, strings, lists and dicts only (what weights_only loading
    accepts): numpy scalars become floats, dict keys strings."""
    return json.loads(json.dumps(value, default=float))


def read_checkpoint_run_id(path: Path) -> str | None:
    """The MLflow run id a resumable checkpoint was written under (None without one)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return state.get("run_id") if isinstance(state, dict) else None
