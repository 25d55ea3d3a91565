"""Pipeline stages wired together: features -> train -> index -> evaluate, tracked.

Each stage reads what the previous one wrote under `pipeline.output_dir`:
  features/   the feature set (features.pipeline)
  checkpoints/best.pt, last.pt
  model/      the recommender bundle (recommender.py)
  training/   history, task relations and gate utilisation (JSON and plots)
  baselines/  single-task baseline models
  reports/    evaluation.json, metrics.json, report.md and plots/
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys_mtl.atomic import write_json_atomic
from recsys_mtl.config import PipelineConfig, TaskConfig
from recsys_mtl.data.sources import load_dataset
from recsys_mtl.errors import RecsysError
from recsys_mtl.evaluation.evaluate import RankingQueries
from recsys_mtl.evaluation.offline import MODEL, evaluate_systems, flat_metrics
from recsys_mtl.evaluation.systems import (
    build_test_set,
    model_system,
    oracle_system,
    popularity_system,
    rating_mean_systems,
    single_task_system,
)
from recsys_mtl.features.pipeline import (
    FeatureSet,
    build_features,
    load_features,
    save_features,
)
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.model.architectures import SHARING
from recsys_mtl.model.multitask import MultiTaskModel, build_model
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.plots import recall_speed
from recsys_mtl.recommender import Recommender
from recsys_mtl.retrieval.index import ItemIndex
from recsys_mtl.retrieval.quality import measure_quality
from recsys_mtl.tracking import NoopTracker, Tracker
from recsys_mtl.training.diagnostics import write_training_diagnostics
from recsys_mtl.training.distributed import SINGLE, Distributed, resolve_device
from recsys_mtl.training.inputs import PROBE_COLUMNS, TrainingInput, training_input
from recsys_mtl.training.ranking_probe import RankingProbe
from recsys_mtl.training.tensors import TensorData
from recsys_mtl.training.trainer import Trainer, TrainingResult


@dataclass
class Paths:
    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def evaluated_model(self) -> Path:
        """With training.refit = 'all': the evaluated bundle (model/ holds the deployed)."""
        return self.root / "model_evaluated"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    @property
    def index_report(self) -> Path:
        return self.root / "index"


@dataclass
class RunSummary:
    metrics: dict[str, float] = field(default_factory=dict)
    training: TrainingResult | None = None
    samples: pl.DataFrame | None = None
    run_id: str | None = None
    model_uri: str | None = None
    evaluated_model_uri: str | None = None


def features_stage(config: PipelineConfig, tracker: Tracker | None = None) -> FeatureSet:
    tracker = tracker or NoopTracker()
    start = time.perf_counter()
    features = build_features(load_dataset(config), config)
    save_features(
        features,
        Paths(config.output_path).features,
        config.features.shard_rows,
        config.features.row_group_rows,
    )
    features.folder = Paths(config.output_path).features
    tracker.log_dict(features.spec, "features/spec.json")
    tracker.log_metrics(
        {
            "features/seconds": time.perf_counter() - start,
            **{f"features/rows_{k}": v for k, v in features.spec["rows"].items()},
        }
    )
    return features


def check_registered(config: PipelineConfig) -> None:
    for key, registry, value in [
        ("model.sharing", SHARING, config.model.sharing),
        ("objectives.weighting", WEIGHTING, config.objectives.weighting),
    ]:
        if value not in registry:
            raise RecsysError(f"unknown {key} '{value}'", fix=f"use one of {sorted(registry)}")


def training_fingerprint(config: PipelineConfig, features_spec: dict[str, object]) -> str:
    """sha256 of what decides a training run's result: the configuration (less tracking
    and display settings) and the features' spec. A checkpoint resumes only a run with
    the same fingerprint."""
    settings = config.to_dict()
    settings.pop("tracking", None)
    settings.get("training", {}).pop("progress", None)
    text = json.dumps({"config": settings, "features": features_spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def item_log_frequency(clicks: torch.Tensor) -> torch.Tensor:
    """log of each item's share of the training clicks (+1 smoothing), (n_items,), from
    the click count of each item index."""
    counts = clicks.float() + 1.0
    return torch.log(counts / counts.sum())


def _trainer(
    config: PipelineConfig,
    model: MultiTaskModel,
    inputs: TrainingInput,
    tracker: Tracker | None,
    checkpoints: Path | None,
    ranking_probe: RankingProbe | None = None,
    task_monitors: dict[str, str] | None = None,
    distributed: Distributed = SINGLE,
    fingerprint: str = "",
) -> Trainer:
    return Trainer(
        model,
        config.tasks,
        WEIGHTING[config.objectives.weighting](config.tasks, config.objectives),
        config.training,
        config.pipeline.seed,
        tracker,
        checkpoints,
        item_log_frequency(inputs.item_clicks),
        ranking_probe,
        task_monitors,
        distributed,
        resolve_device(config.training.device, distributed),
        fingerprint,
    )


def _fit(
    config: PipelineConfig,
    features: FeatureSet,
    tracker: Tracker | None,
    checkpoints: Path | None,
    task_monitors: dict[str, str] | None = None,
    distributed: Distributed = SINGLE,
    resume_from: Path | None = None,
) -> tuple[MultiTaskModel, TrainingResult, Trainer]:
    """Train on the training split with early stopping on validation; with
    `training.refit`, retrain a fresh model on both for the selected number of epochs.
    Returns the selected model (on the CPU), its record and the trainer that produced
    it. Large training splits are streamed (`training.in_memory_rows`); in a
    distributed run each rank trains on its own share and rank 0 validates."""
    check_registered(config)
    torch.manual_seed(config.pipeline.seed)
    tasks = config.tasks
    retrieval_label = tasks[retrieval_task_name(config)].label
    inputs = training_input(
        features, ["train"], tasks, config.training, retrieval_label, distributed
    )
    validation = None
    if distributed.is_main:
        validation = TensorData.from_frame(features.validation, tasks, features.transform)
    model = build_model(features.transform, config.model, tasks, inputs.label_means)
    probe = None
    if config.training.ranking_users and distributed.is_main:
        probe = RankingProbe.from_frames(
            inputs.frame(PROBE_COLUMNS),
            features.validation,
            inputs.take,
            validation,
            config.evaluation.k,
            config.training.ranking_users,
            config.pipeline.seed,
        )
    fingerprint = training_fingerprint(config, features.spec)
    trainer = _trainer(
        config, model, inputs, tracker, checkpoints, probe, task_monitors, distributed, fingerprint
    )
    try:
        result = trainer.fit(inputs.rows, validation, resume_from)
    except ValueError as exc:
        raise RecsysError(str(exc), fix="set training.monitor to one of those names") from None
    if config.training.refits:
        del inputs
        model, result, trainer = _refit(
            config, features, ["train", "validation"], result,
            tracker, checkpoints, task_monitors, distributed,
        )  # fmt: skip
    model.to("cpu")
    for state in trainer.task_states.values():
        for name, value in state.items():
            state[name] = value.cpu()
    return model, result, trainer


def _refit(
    config: PipelineConfig,
    features: FeatureSet,
    splits: list[str],
    selected: TrainingResult,
    tracker: Tracker | None = None,
    checkpoints: Path | None = None,
    task_monitors: dict[str, str] | None = None,
    distributed: Distributed = SINGLE,
) -> tuple[MultiTaskModel, TrainingResult, Trainer]:
    """A fresh model trained on the rows of `splits` for the epochs `selected` chose."""
    torch.manual_seed(config.pipeline.seed)
    tasks = config.tasks
    label = tasks[retrieval_task_name(config)].label
    rows = training_input(features, splits, tasks, config.training, label, distributed)
    model = build_model(features.transform, config.model, tasks, rows.label_means)
    trainer = _trainer(config, model, rows, tracker, checkpoints, None, task_monitors, distributed)
    return model, trainer.refit(rows.rows, selected), trainer


def retrieval_task_name(config: PipelineConfig) -> str:
    """The task whose head is the retrievable inner product (the model's retrieval_task)."""
    return next(name for name, task in config.tasks.items() if task.head == "dot")


def seen_interactions(
    features: FeatureSet, splits: tuple[str, ...] = ("train", "validation")
) -> pl.DataFrame:
    """The rows of `splits` whose positives a served model treats as seen (the columns
    the bundle and the baselines read, without loading whole splits). Default: what
    was known before the test (train + validation)."""
    labels = [task["label"] for task in features.spec.get("tasks", {}).values()]
    wanted = dict.fromkeys(
        ["user_id", "item_id", "user_idx", "item_idx", "timestamp", "visible_at", *labels]
    )
    present = features.column_names("train")
    columns = [c for c in wanted if c in present]
    return pl.concat(
        [features.columns(name, columns) for name in splits],
        how="diagonal_relaxed",
    )


def train_stage(
    config: PipelineConfig,
    features: FeatureSet,
    tracker: Tracker | None = None,
    distributed: Distributed = SINGLE,
    resume: bool = False,
) -> tuple[Recommender | None, TrainingResult]:
    """Train, save the bundle and the training record. In a distributed run every rank
    trains; rank 0 alone writes (checkpoints, bundle, record) and returns the
    recommender, the other ranks return None. `resume`: continue from
    checkpoints/last.pt (written after every epoch) when there is one; the result is
    the one an uninterrupted run would have given."""
    given = features
    features = features.without_test()  # protocol guard: training never sees the test split
    paths = Paths(config.output_path)
    resume_from = None
    if resume:
        resume_from = paths.checkpoints / "last.pt"
        if not resume_from.is_file():
            logging.getLogger(__name__).warning(
                "nothing to resume in %s: training starts from the beginning", paths.checkpoints
            )
            resume_from = None
    model, result, _ = _fit(
        config,
        features,
        tracker,
        paths.checkpoints if distributed.is_main else None,
        distributed=distributed,
        resume_from=resume_from,
    )
    if not distributed.is_main:
        return None, result
    # The bundle knows every event it was given, test split included (read only now,
    # after training); each is excluded from requests from the time it became visible.
    everything = seen_interactions(given, ("train", "validation", "test"))
    recommender = Recommender.from_training(
        model, features.transform, everything, config.retrieval, config.model
    )
    recommender.save(paths.model)
    tracker = tracker or NoopTracker()
    tracker.log_metrics({"train/seconds": result.seconds, "train/best_epoch": result.best_epoch})
    write_json_atomic(training_record(result), paths.training / "history.json")
    if write_training_diagnostics(result, paths.training):
        tracker.log_artifact(paths.training, "training")
    return recommender, result


def training_record(result: TrainingResult) -> dict[str, object]:
    """What a report needs from training: per-epoch metrics and per-step losses/weights."""
    return {
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "tasks": result.tasks,
        "seconds": result.seconds,
        "history": result.history,
        "steps": result.steps,
    }


def index_stage(
    config: PipelineConfig, recommender: Recommender, tracker: Tracker | None = None
) -> Recommender:
    """Build the index, tune its search parameter to `retrieval.target_recall` unless
    configured, write the quality report (recall@K against exact search, queries per
    second, a recall-versus-speed plot) next to the model and save the bundle."""
    tracker = tracker or NoopTracker()
    retrieval = config.retrieval
    recommender.retrieval = retrieval
    index = recommender.build_index(retrieval.index)
    fixed = recommender.configured_search_value()
    n_users = recommender.transform.users.ids.size - FIRST
    rng = np.random.default_rng(config.pipeline.seed)
    sample = rng.choice(n_users, size=min(retrieval.quality_queries, n_users), replace=False)
    users = recommender.transform.users.ids.values.gather(np.sort(sample))
    report = measure_quality(
        index,
        recommender.item_vectors(),
        recommender.user_vectors(users, where="index quality"),
        k=retrieval.quality_k,
        target_recall=retrieval.target_recall,
    )
    if fixed:
        index.set_search_value(fixed)
        chosen = [p for p in report.points if p.value == fixed]
        report.chosen = chosen[0] if chosen else report.chosen
    folder = Paths(config.output_path).index_report
    write_json_atomic(report.to_dict(), folder / "quality.json")
    label = report.points[0].parameter or "exact"
    recall_speed(
        {
            index.factory: [
                (p.recall, p.queries_per_second, f"{p.value or label}") for p in report.points
            ]
        },
        f"{index.factory}: recall@{report.k} vs speed ({report.n_items} items, "
        f"{report.n_queries} queries)",
        folder / "recall_vs_speed.png",
        target=retrieval.target_recall,
        exact_qps=report.exact_queries_per_second,
    )
    tracker.log_metrics(report.metrics())
    tracker.log_params({f"index/{k}": v for k, v in index_settings(index).items()})
    tracker.log_artifact(folder, "index")
    recommender.save(Paths(config.output_path).model)
    return recommender


def index_settings(index: ItemIndex) -> dict[str, object]:
    """The built index's factory string and search parameter, as logged."""
    settings: dict[str, object] = {"factory": index.factory}
    if index.search_parameter:
        settings[index.search_parameter] = index.search_value
    return settings


def load_recommender(config: PipelineConfig) -> Recommender:
    path = Paths(config.output_path).model
    if not (path / "manifest.json").is_file():
        raise RecsysError(
            f"no trained model in '{path}'",
            fix="run `recsys-mtl train PIPELINE.toml` (or `recsys-mtl run`) first",
        )
    return Recommender.load(path)


def single_task_config(config: PipelineConfig) -> PipelineConfig:
    """The single-task baselines' configuration: the same features, sizes and trainer,
    with towers that share nothing (`sharing = 'none'`, no task groups), no task
    dependencies, static weights and no validation ranking probe."""
    baseline = copy.deepcopy(config)
    baseline.model.sharing = "none"
    baseline.model.task_groups = []
    for task in baseline.tasks.values():
        task.depends_on = ""
        task.input_from = ""
    baseline.objectives.weighting = "static"
    baseline.training.ranking_users = 0
    baseline.training.monitor_weights = {}
    baseline.training.monitor = task_monitor(*next(iter(baseline.tasks.items())))
    return baseline


def task_monitor(name: str, task: TaskConfig) -> str:
    """The validation metric a single-task model of `task` is selected on."""
    return f"val/{name}_auc" if task.kind == "binary" else f"val/{name}_rmse"


def single_task_stage(
    config: PipelineConfig, features: FeatureSet, tracker: Tracker | None = None
) -> dict[str, Recommender]:
    """One single-task model per task, trained once as a `none` model whose towers are
    each kept at their own task's best validation epoch (`Trainer(task_monitors=...)`).
    Saved under baselines/single_task/<task>; reused while the configuration and the
    features are unchanged."""
    baseline = single_task_config(config)
    folder = Paths(config.output_path).baselines / "single_task"
    key = {"config": baseline.to_dict(), "features": features.spec}
    stamp = folder / "trained_for.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(key)):
        return {task: Recommender.load(folder / task) for task in baseline.tasks}
    monitors = {name: task_monitor(name, task) for name, task in baseline.tasks.items()}
    model, result, trainer = _fit(baseline, features.without_test(), None, None, monitors)
    models = {}
    for task, state in trainer.task_states.items():
        model.load_state_dict(state)
        recommender = Recommender.from_training(
            copy.deepcopy(model),
            features.transform,
            seen_interactions(features),
            baseline.retrieval,
            baseline.model,
        )
        recommender.save(folder / task)
        models[task] = recommender
    write_json_atomic(key, stamp)
    (tracker or NoopTracker()).log_metrics(
        {
            "single_task/train_seconds": result.seconds,
            **{f"single_task/{t}_epoch": e for t, e in result.task_epochs.items()},
        }
    )
    return models


def split_fingerprints(config: PipelineConfig) -> dict[str, str]:
    """sha256 of each split's Parquet files as the features stage wrote them."""
    fingerprints = {}
    for split in ("train", "validation", "test"):
        digest = hashlib.sha256()
        files = sorted((Paths(config.output_path).features / split).glob("*.parquet"))
        for path in files:
            digest.update(path.read_bytes())
        fingerprints[split] = digest.hexdigest() if files else ""
    return fingerprints


def evaluate_stage(
    config: PipelineConfig,
    recommender: Recommender,
    features: FeatureSet,
    tracker: Tracker | None = None,
) -> dict[str, float]:
    """Test metrics of the model and its baselines with bootstrap intervals, paired
    differences and segments; the report (JSON, markdown, plots) under reports/.

    Baselines that train (single-task models) do so first, on the training and
    validation splits only; the test split is read once, after all training."""
    from recsys_mtl.evaluation.report import write_report

    tracker = tracker or NoopTracker()
    tasks = recommender.model.tasks
    ev = config.evaluation
    single_task = (
        single_task_stage(config, features, tracker) if "single_task" in ev.baselines else {}
    )
    seen = seen_interactions(features)
    test = features.test  # read once, here, after training
    # The report's numbers are the shipped bundle's (it knows every event, test
    # included, each visible as the freshness rule says): the test rows are scored
    # through the served path, exactly as `evaluate --model --input` scores them.
    queries = RankingQueries(recommender, test)
    depth = max([*ev.k, *ev.curve_k])
    systems = [
        model_system(
            MODEL,
            f"multi-task model ({config.model.sharing})",
            recommender,
            test,
            queries,
            depth,
        )
    ]
    oracle = oracle_system(test, tasks)
    if oracle is not None:
        systems.append(oracle)
    if single_task:
        systems.append(
            single_task_system(single_task, test, queries, depth, recommender.model.retrieval_task)
        )
    if "popularity" in ev.baselines:
        systems.append(popularity_system(recommender, test, queries, depth, tasks, seen))
    wanted_means = [b for b in ev.baselines if b.endswith("_mean")]
    systems += [s for s in rating_mean_systems(seen, test, tasks) if s.name in wanted_means]
    report = evaluate_systems(
        build_test_set(recommender, test, queries, tasks),
        systems,
        tasks,
        ev.k,
        curve_ks=ev.curve_k,
        resamples=ev.bootstrap,
        level=ev.confidence,
        seed=config.pipeline.seed,
        cold_max_events=ev.cold_user_events,
    )
    report["protocol"] = {
        "split": features.spec["split"],
        "rows": features.spec["rows"],
        "source": features.spec["source"],
        "fingerprints": split_fingerprints(config),
        "model_selection": {
            "monitor": config.training.monitor,
            "on": "validation",
            "refit_on_train_and_validation": config.training.refits,
            "deployed": "a model retrained on every split (training.refit = 'all'); these "
            "metrics are the evaluated model's, kept in model_evaluated/"
            if config.training.deploys_on_all
            else "the evaluated model",
        },
        "test_split": "read once, after training",
        "scored_by": "the shipped bundle (Recommender.predict / recommend), as "
        "`evaluate --model --input` scores the same rows",
        "history_freshness": config.features.freshness,
        "ranking": "full catalogue, items seen before the test excluded, exact inner product",
    }
    metrics = flat_metrics(report)
    paths = Paths(config.output_path)
    write_json_atomic(
        {
            "metrics": metrics,
            "split": features.spec["split"],
            "rows": features.spec["rows"],
            "source": features.spec["source"],
        },
        paths.reports / "metrics.json",
    )
    history = paths.training / "history.json"
    training = json.loads(history.read_text()) if history.is_file() else None
    write_report(report, training, paths.reports, title=config.pipeline.name)
    tracker.log_metrics(metrics)
    tracker.log_artifact(paths.reports, "reports")
    return metrics


def deploy_stage(
    config: PipelineConfig,
    features: FeatureSet,
    epochs: int,
    tracker: Tracker | None = None,
) -> Recommender:
    """`training.refit = 'all'`, after evaluation: keep the evaluated bundle in
    model_evaluated/, train a fresh model on every split (test included) for `epochs`
    (the count early stopping selected) and ship it in model/, indexed as the evaluated
    one was. Its serving state and seen set are the evaluated bundle's (every event)."""
    import shutil

    tracker = tracker or NoopTracker()
    paths = Paths(config.output_path)
    staging = paths.evaluated_model.with_name(paths.evaluated_model.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(paths.model, staging)
    shutil.rmtree(paths.evaluated_model, ignore_errors=True)
    staging.rename(paths.evaluated_model)
    start = time.perf_counter()
    splits = ["train", "validation", "test"]
    selected = TrainingResult(best_epoch=epochs, best_score=float("nan"))
    model, _, _ = _refit(config, features, splits, selected)
    model.to("cpu")
    recommender = Recommender.from_training(
        model,
        features.transform,
        seen_interactions(features, tuple(splits)),
        config.retrieval,
        config.model,
    )
    recommender.save(paths.model)
    index_stage(config, recommender)
    rows = sum(features.spec["rows"][name] for name in splits)
    tracker.log_metrics(
        {
            "deploy/seconds": time.perf_counter() - start,
            "deploy/epochs": epochs,
            "deploy/rows": rows,
        }
    )
    tracker.set_tags(
        {
            "deployed_model": "retrained on train + validation + test (training.refit = 'all')",
            "evaluated_model": "model_evaluated/ (the test metrics are its)",
        }
    )
    write_json_atomic(
        {"epochs": epochs, "splits": splits, "rows": rows, "evaluated_model": "model_evaluated"},
        paths.training / "deployment.json",
    )
    return recommender


def selected_epochs(config: PipelineConfig) -> int:
    """The epoch count early stopping selected, from the training record."""
    record = Paths(config.output_path).training / "history.json"
    if not record.is_file():
        raise RecsysError(
            f"no training record in '{record}'",
            fix="run `recsys-mtl train PIPELINE.toml` before evaluating",
        )
    return int(json.loads(record.read_text())["best_epoch"])


def sample_queries(
    config: PipelineConfig, recommender: Recommender, features: FeatureSet, k: int = 5
) -> pl.DataFrame:
    users = features.test["user_id"].unique(maintain_order=True).head(config.retrieval.sample_users)
    return recommender.recommend(users, k=k)


def run_pipeline(
    config: PipelineConfig, tracker: Tracker | None = None, resume: bool = False
) -> RunSummary:
    """All stages in order; logs params, metrics and artifacts to `tracker`. `resume`:
    reuse the features already written and continue training from its last
    checkpoint (see `train_stage`)."""
    tracker = tracker or NoopTracker()
    tracker.log_params(config.flat_params())
    folder = Paths(config.output_path).features
    if resume and (folder / "spec.json").is_file():
        features = load_features(folder)
    else:
        features = features_stage(config, tracker)
    if features.spec["rows"]["train"] > config.training.in_memory_rows:
        # Out of core: free the frames; training streams its rows from the shards and
        # later stages read only the splits and columns they use.
        features = load_features(Paths(config.output_path).features)
        gc.collect()
    recommender, result = train_stage(config, features, tracker, resume=resume)
    assert recommender is not None
    index_stage(config, recommender, tracker)
    metrics = evaluate_stage(config, recommender, features, tracker)
    if config.training.deploys_on_all:
        recommender = deploy_stage(config, features, result.best_epoch, tracker)
    samples = sample_queries(config, recommender, features)
    return RunSummary(metrics, result, samples, tracker.run_id)
