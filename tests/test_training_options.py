"""Training options: the validation ranking probe and parameter averaging."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys_mtl.config import ModelSection, PipelineConfig, TrainingSection, config_from_dict
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.features.pipeline import FeatureSet, build_features
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.model.multitask import build_model
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.training.averaging import ParameterAverage
from recsys_mtl.training.ranking_probe import RankingProbe
from recsys_mtl.training.tensors import TensorData
from recsys_mtl.training.trainer import Trainer

SMALL_MODEL = ModelSection(embedding_dim=8, hidden_dims=[16], output_dim=6, head_hidden_dim=8)


@pytest.fixture(scope="module")
def small() -> tuple[PipelineConfig, FeatureSet]:
    config = config_from_dict(
        {
            "pipeline": {"seed": 5},
            "source": {"synthetic": {"n_users": 60, "n_items": 40, "impressions_per_user": 25}},
            "tracking": {"enabled": False},
        }
    )
    data = generate_synthetic(config.source.synthetic, config.pipeline.seed)
    return config, build_features(data, config)


def _tensors(small) -> tuple[TensorData, TensorData]:
    config, features = small
    return (
        TensorData.from_frame(features.train, config.tasks, features.transform),
        TensorData.from_frame(features.validation, config.tasks, features.transform),
    )


# ---------------------------------------------------------------------------- ranking probe


def test_probe_queries_and_catalogue_are_the_right_rows(small) -> None:
    _, features = small
    train, validation = _tensors(small)
    probe = RankingProbe.from_frames(features.train, features.validation, train, validation, [5])
    assert probe is not None
    clicked_users = (
        features.validation.filter((pl.col("click") == 1) & (pl.col("item_idx") >= FIRST))[
            "user_idx"
        ]
        .unique()
        .sort()
        .to_numpy()
    )
    assert np.array_equal(probe.queries.users.numpy(), clicked_users)
    # each query is the user's earliest validation row: its user-side row features
    first = (
        features.validation.with_row_index("_row")
        .sort("timestamp", "_row")
        .group_by("user_idx", maintain_order=True)
        .first()
        .sort("user_idx")
        .filter(pl.col("user_idx").is_in(clicked_users.tolist()))
    )
    expected = validation.take(torch.from_numpy(first["_row"].to_numpy().astype(np.int64)))
    assert torch.equal(probe.queries.user_rows.numeric, expected.user_rows.numeric)
    assert torch.equal(probe.queries.user_rows.categorical, expected.user_rows.categorical)
    # the catalogue: every training item once
    train_items = np.unique(features.train["item_idx"].to_numpy())
    assert np.array_equal(np.sort(probe.catalogue.items.numpy()), train_items[train_items >= FIRST])


def test_probe_equals_a_brute_force_ranking(small) -> None:
    config, features = small
    train, validation = _tensors(small)
    torch.manual_seed(3)
    model = build_model(features.transform, SMALL_MODEL, config.tasks).eval()
    probe = RankingProbe.from_frames(features.train, features.validation, train, validation, [3, 5])
    got = probe.evaluate(model)
    with torch.no_grad():
        users = model.user_vectors(
            model.user_encoder(probe.queries.users, probe.queries.user_rows)
        ).numpy()
        items = model.item_vectors(
            model.item_encoder(probe.catalogue.items, probe.catalogue.item_rows)
        ).numpy()
    catalogue = probe.catalogue.items.numpy()
    clicks_train = features.train.filter(pl.col("click") == 1)
    clicks_val = features.validation.filter((pl.col("click") == 1) & (pl.col("item_idx") >= FIRST))
    expected: dict[int, list[float]] = {3: [], 5: []}
    for q, user in enumerate(probe.queries.users.numpy()):
        seen = set(clicks_train.filter(pl.col("user_idx") == user)["item_idx"].to_list())
        relevant = set(clicks_val.filter(pl.col("user_idx") == user)["item_idx"].to_list())
        scores = users[q] @ items.T
        ranked = [int(catalogue[j]) for j in np.argsort(-scores) if catalogue[j] not in seen]
        for k in expected:
            expected[k].append(len(set(ranked[:k]) & relevant) / len(relevant))
    for k, values in expected.items():
        assert got[f"recall@{k}"] == pytest.approx(np.mean(values), abs=1e-9)
    assert got["recall@5"] >= got["recall@3"]


def test_probe_metrics_reach_the_trainer_and_the_monitor(small) -> None:
    config, features = small
    train, validation = _tensors(small)
    torch.manual_seed(0)
    model = build_model(features.transform, SMALL_MODEL, config.tasks)
    probe = RankingProbe.from_frames(features.train, features.validation, train, validation, [5])
    trainer = Trainer(
        model,
        config.tasks,
        WEIGHTING["static"](config.tasks),
        TrainingSection(epochs=2, monitor="val/recall@5", progress=False, batch_size=256),
        seed=0,
        ranking_probe=probe,
    )
    result = trainer.fit(train, validation)
    assert result.best_score == max(h["val/recall@5"] for h in result.history)
    assert all(0.0 <= h["val/ndcg@5"] <= 1.0 for h in result.history)


# ---------------------------------------------------------------------------- averaging


def test_parameter_average_by_hand() -> None:
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = ParameterAverage(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    for _ in range(3):
        average.update(layer)
    # warm-up decays 1/10, 2/11, 3/12 (all below 0.5): 0.9, then 0.98182, then 0.99545
    shadow = 0.0
    for t in range(3):
        d = min(0.5, (1 + t) / (10 + t))
        shadow = d * shadow + (1 - d)
    assert average.shadow["weight"].item() == pytest.approx(shadow, abs=1e-6)
    assert shadow == pytest.approx(0.995454, abs=1e-5)
    with average.applied(layer):
        assert layer.weight.item() == pytest.approx(shadow, abs=1e-6)
    assert layer.weight.item() == 1.0


def test_refit_with_averaging_exports_the_averaged_weights(small) -> None:
    config, features = small
    train, validation = _tensors(small)
    torch.manual_seed(0)
    model = build_model(features.transform, SMALL_MODEL, config.tasks)
    cfg = TrainingSection(epochs=2, progress=False, batch_size=256, average_decay=0.9)
    trainer = Trainer(model, config.tasks, WEIGHTING["static"](config.tasks), cfg, seed=0)
    selected = trainer.fit(train, validation)
    fresh = build_model(features.transform, SMALL_MODEL, config.tasks)
    refitter = Trainer(fresh, config.tasks, WEIGHTING["static"](config.tasks), cfg, seed=0)
    refitter.refit(train, selected)
    assert refitter.average is not None and refitter.average.steps > 0
    for name, parameter in fresh.named_parameters():
        assert torch.equal(parameter.detach(), refitter.average.shadow[name]), name


def test_bad_training_options_are_config_errors() -> None:
    from recsys_mtl.errors import RecsysError

    with pytest.raises(RecsysError, match="average_decay"):
        config_from_dict({"training": {"average_decay": 1.0}})
    with pytest.raises(RecsysError, match="ranking_users"):
        config_from_dict({"training": {"ranking_users": -1}})
