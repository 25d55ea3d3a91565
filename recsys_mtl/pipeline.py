"""Pipeline stages wired together: features -> train -> index -> evaluate, tracked.

Each stage reads what the previous one wrote under `pipeline.output_dir`:
  features/   the feature set (features.pipeline)
  checkpoints/best.pt, last.pt
  model/      the recommender bundle (recommender.py)
  training/   task relations and gate utilisation (JSON and heatmaps)
  reports/    test metrics as JSON
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys_mtl.atomic import write_json_atomic
from recsys_mtl.config import PipelineConfig
from recsys_mtl.data.sources import load_dataset
from recsys_mtl.errors import RecsysError
from recsys_mtl.evaluation.evaluate import (
    oracle_predictions,
    pointwise_metrics,
    ranking_evaluation,
)
from recsys_mtl.features.pipeline import FeatureSet, build_features, save_features
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.model.architectures import SHARING
from recsys_mtl.model.multitask import MultiTaskModel, build_model
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.recommender import Recommender
from recsys_mtl.tracking import NoopTracker, Tracker
from recsys_mtl.training.diagnostics import write_training_diagnostics
from recsys_mtl.training.ranking_probe import RankingProbe
from recsys_mtl.training.tensors import TensorData, predict_arrays
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
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


@dataclass
class RunSummary:
    metrics: dict[str, float] = field(default_factory=dict)
    training: TrainingResult | None = None
    samples: pl.DataFrame | None = None
    run_id: str | None = None
    model_uri: str | None = None


def features_stage(config: PipelineConfig, tracker: Tracker | None = None) -> FeatureSet:
    tracker = tracker or NoopTracker()
    start = time.perf_counter()
    features = build_features(load_dataset(config), config)
    save_features(features, Paths(config.output_path).features, config.features.shard_rows)
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


def item_log_frequency(train: TensorData, model: MultiTaskModel) -> torch.Tensor:
    """log of each item's share of the training clicks (+1 smoothing), (n_items,)."""
    clicked = train.labels[model.retrieval_task] == 1
    n_items = model.item_encoder.spec.id_vocab_size
    counts = torch.bincount(train.items[clicked], minlength=n_items).float() + 1.0
    return torch.log(counts / counts.sum())


def _trainer(
    config: PipelineConfig,
    model: MultiTaskModel,
    train: TensorData,
    tracker: Tracker | None,
    ranking_probe: RankingProbe | None = None,
) -> Trainer:
    return Trainer(
        model,
        config.tasks,
        WEIGHTING[config.objectives.weighting](config.tasks, config.objectives),
        config.training,
        config.pipeline.seed,
        tracker,
        Paths(config.output_path).checkpoints,
        item_log_frequency(train, model),
        ranking_probe,
    )


def train_stage(
    config: PipelineConfig, features: FeatureSet, tracker: Tracker | None = None
) -> tuple[Recommender, TrainingResult]:
    check_registered(config)
    torch.manual_seed(config.pipeline.seed)
    tasks = config.tasks
    train = TensorData.from_frame(features.train, tasks, features.transform)
    validation = TensorData.from_frame(features.validation, tasks, features.transform)
    model = build_model(features.transform, config.model, tasks, train.label_means())
    probe = None
    if config.training.ranking_users:
        probe = RankingProbe.from_frames(
            features.train,
            features.validation,
            train,
            validation,
            config.evaluation.k,
            config.training.ranking_users,
            config.pipeline.seed,
        )
    trainer = _trainer(config, model, train, tracker, probe)
    try:
        result = trainer.fit(train, validation)
    except ValueError as exc:
        raise RecsysError(str(exc), fix="set training.monitor to one of those names") from None
    if config.training.refit:
        torch.manual_seed(config.pipeline.seed)
        everything = TensorData.concat([train, validation])
        model = build_model(features.transform, config.model, tasks, everything.label_means())
        result = _trainer(config, model, everything, tracker).refit(everything, result)
    recommender = Recommender.from_training(
        model,
        features.transform,
        pl.concat([features.train, features.validation], how="diagonal_relaxed"),
        config.retrieval,
        config.model,
    )
    recommender.save(Paths(config.output_path).model)
    tracker = tracker or NoopTracker()
    tracker.log_metrics({"train/seconds": result.seconds, "train/best_epoch": result.best_epoch})
    if write_training_diagnostics(result, Paths(config.output_path).training):
        tracker.log_artifact(Paths(config.output_path).training, "training")
    return recommender, result


def index_stage(config: PipelineConfig, recommender: Recommender) -> Recommender:
    recommender.build_index(config.retrieval.index)
    recommender.save(Paths(config.output_path).model)
    return recommender


def load_recommender(config: PipelineConfig) -> Recommender:
    path = Paths(config.output_path).model
    if not (path / "manifest.json").is_file():
        raise RecsysError(
            f"no trained model in '{path}'",
            fix="run `recsys-mtl train PIPELINE.toml` (or `recsys-mtl run`) first",
        )
    return Recommender.load(path)


def evaluate_stage(
    config: PipelineConfig,
    recommender: Recommender,
    features: FeatureSet,
    tracker: Tracker | None = None,
) -> dict[str, float]:
    """Test metrics of the model, plus the oracle (synthetic data) and popularity."""
    tasks = recommender.model.tasks
    test = TensorData.from_frame(features.test, tasks, recommender.transform)
    metrics = {
        f"test/{k}": v
        for k, v in pointwise_metrics(test, predict_arrays(recommender.model, test), tasks).items()
    }
    oracle = oracle_predictions(features.test, tasks)
    if len(oracle) == len(tasks):
        metrics.update(
            {f"oracle/{k}": v for k, v in pointwise_metrics(test, oracle, tasks).items()}
        )
    popularity = np.bincount(
        features.train.filter(pl.col("click") == 1)["item_idx"].to_numpy(),
        minlength=recommender.n_items,
    )[FIRST:].astype(np.float32)
    ranking = ranking_evaluation(
        recommender, features.test, config.evaluation.k, item_popularity=popularity
    )
    for key, value in ranking.items():
        metrics[key if key.startswith("popularity/") else f"test/{key}"] = value
    report = {
        "metrics": metrics,
        "split": features.spec["split"],
        "rows": features.spec["rows"],
        "source": features.spec["source"],
    }
    write_json_atomic(report, Paths(config.output_path).reports / "metrics.json")
    (tracker or NoopTracker()).log_metrics(metrics)
    return metrics


def sample_queries(
    config: PipelineConfig, recommender: Recommender, features: FeatureSet, k: int = 5
) -> pl.DataFrame:
    users = features.test["user_id"].unique(maintain_order=True).head(config.retrieval.sample_users)
    return recommender.recommend(users, k=k)


def run_pipeline(config: PipelineConfig, tracker: Tracker | None = None) -> RunSummary:
    """All stages in order; logs params, metrics and artifacts to `tracker`."""
    tracker = tracker or NoopTracker()
    tracker.log_params(config.flat_params())
    features = features_stage(config, tracker)
    recommender, result = train_stage(config, features, tracker)
    index_stage(config, recommender)
    metrics = evaluate_stage(config, recommender, features, tracker)
    samples = sample_queries(config, recommender, features)
    return RunSummary(metrics, result, samples, tracker.run_id)
