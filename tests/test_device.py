"""The GPU path without a GPU: inside the training step nothing may make a tensor on a
fixed device. Each step below runs with the *default* device set to `meta` while the
model and rows live on the CPU, so any tensor made without `device=` (torch.eye,
torch.arange, torch.tensor, torch.zeros, ...) lands on `meta` and the next operation
mixing it with the model's tensors fails, exactly as a CPU tensor would beside a CUDA
model. Every sharing option, every weighting, the in-batch retrieval loss, static
retrieval items, sparse embedding tables, id dropout, averaging, the task relation
matrix, the validation ranking probe and rows streamed from Parquet shards; in float32
and under bfloat16 autocast."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from planted import one_torch_thread

from recsys_mtl.config import PipelineConfig, config_from_dict
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import FeatureSet, build_features, save_features
from recsys_mtl.features.shards import SplitShards
from recsys_mtl.model.multitask import build_model
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.pipeline import item_log_frequency
from recsys_mtl.training.ranking_probe import RankingProbe
from recsys_mtl.training.stream import StreamedRows
from recsys_mtl.training.tensors import TensorData
from recsys_mtl.training.trainer import Trainer

SHARING = ("none", "hard", "cross_stitch", "soft_l2", "mmoe", "cgc", "ple")
WEIGHTINGS = ("static", "inverse_loss", "uncertainty", "gradnorm", "dwa", "pcgrad", "famo")


@pytest.fixture(scope="module")
def rows() -> tuple[PipelineConfig, FeatureSet, TensorData, TensorData]:
    config = config_from_dict(
        {
            "pipeline": {"seed": 5},
            "source": {"synthetic": {"n_users": 40, "n_items": 25, "impressions_per_user": 12}},
            "features": {"recent_items": 3, "recent_ratings": 3, "item_history": True},
            "model": {
                "embedding_dim": 4,
                "hidden_dims": [8],
                "output_dim": 4,
                "head_hidden_dim": 4,
                "experts": 2,
                "id_dropout": 0.1,
            },
            "tracking": {"enabled": False},
        }
    )
    features = build_features(generate_synthetic(config.source.synthetic, 5), config)
    train = TensorData.from_frame(features.train, config.tasks, features.transform)
    validation = TensorData.from_frame(features.validation, config.tasks, features.transform)
    return config, features, train.take(slice(0, 192)), validation


def _configured(
    config: PipelineConfig, sharing: str, weighting: str, variant: str, precision: str = "float32"
):
    retrieval, static_items = {"plain": (0.0, False), "in_batch": (0.3, False),
                               "in_batch_static": (0.3, True)}[variant]  # fmt: skip
    model = dataclasses.replace(config.model, sharing=sharing, static_retrieval_items=static_items)
    training = dataclasses.replace(
        config.training,
        batch_size=64,
        retrieval_loss_weight=retrieval,
        relation_every=2,
        average_decay=0.9,
        sparse_embedding_rows=30,  # the user table is sparse: row-wise Adam
        progress=False,
        precision=precision,
    )
    objectives = dataclasses.replace(config.objectives, weighting=weighting)
    return dataclasses.replace(config, model=model, training=training, objectives=objectives)


def _one_epoch_with_meta_default(
    rows, sharing: str, weighting: str, variant: str, precision: str = "float32"
) -> dict[str, float]:
    base, features, train, validation = rows
    config = _configured(base, sharing, weighting, variant, precision)
    torch.manual_seed(0)
    model = build_model(features.transform, config.model, config.tasks, train.label_means())
    clicks = torch.bincount(
        train.items[train.labels["click"] == 1], minlength=features.transform.items.ids.size
    )
    probe = RankingProbe.from_frames(
        features.train.head(len(train)), features.validation, train, validation, [5]
    )
    trainer = Trainer(
        model,
        config.tasks,
        WEIGHTING[weighting](config.tasks, config.objectives),
        config.training,
        seed=1,
        item_log_frequency=item_log_frequency(clicks),
        ranking_probe=probe,
    )
    trainer._prepare()
    with one_torch_thread(), torch.device("meta"):
        for epoch in (1, 2):  # dwa re-weights from the second epoch on
            metrics = trainer.train_epoch(train, epoch)
        with trainer._averaged():
            metrics.update(trainer.validate(validation))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert metrics["train/samples_per_second"] > 0
    assert metrics["train/epoch_seconds"] > 0
    assert 0.0 <= metrics["val/click_auc"] <= 1.0 and "val/recall@5" in metrics
    return metrics


@pytest.mark.parametrize("variant", ["plain", "in_batch", "in_batch_static"])
@pytest.mark.parametrize("sharing", SHARING)
def test_every_sharing_option_makes_no_tensor_off_the_model_device(rows, sharing, variant):
    _one_epoch_with_meta_default(rows, sharing, "uncertainty", variant)


@pytest.mark.parametrize("sharing", ["hard", "mmoe", "ple"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_weighting_makes_no_tensor_off_the_model_device(rows, weighting, sharing):
    _one_epoch_with_meta_default(rows, sharing, weighting, "in_batch_static")


@pytest.mark.parametrize("sharing", ["hard", "mmoe", "ple"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_bfloat16_steps_keep_float32_parameters_and_losses(rows, weighting, sharing) -> None:
    metrics = _one_epoch_with_meta_default(rows, sharing, weighting, "in_batch", "bfloat16")
    losses = [metrics[f"train/{task}_loss"] for task in ("click", "purchase", "rating")]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert math.isfinite(metrics["train/retrieval_loss"])


def test_precision_is_one_of_the_known_ones() -> None:
    with pytest.raises(RecsysError, match=r"training\.precision"):
        config_from_dict({"training": {"precision": "float16"}})


def test_streamed_training_rows_make_no_tensor_off_the_model_device(rows, tmp_path) -> None:
    """Rows read from Parquet shards buffer by buffer (a split too large for memory):
    the buffers' order, shuffle and carried rows stay on the host, batches move."""
    base, features, train, _ = rows
    save_features(features, tmp_path, shard_rows=400, row_group_rows=97)
    shards = SplitShards(tmp_path / "train")
    streamed = StreamedRows(shards, [(0, shards.rows)], base.tasks, features.transform, 150)
    config = _configured(base, "mmoe", "static", "in_batch_static")
    torch.manual_seed(0)
    model = build_model(features.transform, config.model, config.tasks, train.label_means())
    trainer = Trainer(
        model, config.tasks, WEIGHTING["static"](config.tasks), config.training, seed=1
    )
    trainer._prepare()
    with one_torch_thread(), torch.device("meta"):
        metrics = trainer.train_epoch(streamed, 1)
    assert metrics["train/samples_per_second"] * metrics["train/epoch_seconds"] == (
        pytest.approx(shards.rows)
    )


def test_a_tensor_made_without_a_device_is_caught() -> None:
    """The check itself: under the meta default, a step that builds its own index on a
    fixed device (the bug this file guards against) fails."""
    weights = torch.ones(3, requires_grad=True)
    with torch.device("meta"), pytest.raises(RuntimeError, match="device"):
        (weights * torch.arange(3)).sum()
