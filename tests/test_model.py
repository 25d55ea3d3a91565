"""The multi-task model: faithful retrieval vectors, the purchase funnel, masked losses,
shared-embedding gradients, and recovery of planted structure in synthetic data."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from planted import one_torch_thread

from recsys_mtl.config import ModelSection, PipelineConfig, TrainingSection, config_from_dict
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import FeatureSet, build_features
from recsys_mtl.features.vocab import UNKNOWN
from recsys_mtl.model.multitask import MultiTaskModel, build_model
from recsys_mtl.objectives.losses import task_losses
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.pipeline import evaluate_stage, features_stage, train_stage
from recsys_mtl.training.tensors import TensorData
from recsys_mtl.training.trainer import Trainer

SMALL_MODEL = ModelSection(embedding_dim=8, hidden_dims=[16, 12], output_dim=6, head_hidden_dim=8)


def _small_config() -> PipelineConfig:
    return config_from_dict(
        {
            "pipeline": {"seed": 11},
            "source": {"synthetic": {"n_users": 50, "n_items": 30, "impressions_per_user": 20}},
            "tracking": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def small() -> tuple[PipelineConfig, FeatureSet]:
    config = _small_config()
    data = generate_synthetic(config.source.synthetic, config.pipeline.seed)
    return config, build_features(data, config)


def _fresh_model(small: tuple[PipelineConfig, FeatureSet], seed: int = 0) -> MultiTaskModel:
    config, features = small
    torch.manual_seed(seed)
    train = TensorData.from_frame(features.train, config.tasks, features.transform)
    return build_model(features.transform, SMALL_MODEL, config.tasks, train.label_means())


def _trained_model(small: tuple[PipelineConfig, FeatureSet]) -> MultiTaskModel:
    config, features = small
    model = _fresh_model(small, seed=1)
    tasks = config.tasks
    trainer = Trainer(
        model,
        tasks,
        WEIGHTING["static"](tasks),
        TrainingSection(epochs=3, batch_size=128, learning_rate=0.02, patience=5, progress=False),
        seed=1,
    )
    trainer.fit(
        TensorData.from_frame(features.train, tasks, features.transform),
        TensorData.from_frame(features.validation, tasks, features.transform),
    )
    return model.eval()


# ---------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
def test_inner_product_of_exported_vectors_is_the_click_logit(small, trained: bool) -> None:
    model = _trained_model(small) if trained else _fresh_model(small).eval()
    config, features = small
    data = TensorData.from_frame(features.train, config.tasks, features.transform).take(
        slice(0, 60)
    )  # real rows: ids with their history, context and time features
    n_users = n_items = len(data)
    with torch.no_grad():
        user_vectors = model.user_vectors(model.user_encoder(data.users, data.user_rows))
        scores = user_vectors @ model.item_vectors(model.item_encoder(data.items, data.item_rows)).T
        pair_users = torch.arange(n_users).repeat_interleave(n_items)
        pair_items = torch.arange(n_items).repeat(n_users)
        logits = model(
            data.users[pair_users],
            data.items[pair_items],
            data.user_rows.take(pair_users),
            data.item_rows.take(pair_items),
        )["click"].reshape(n_users, n_items)
    assert scores.shape == (n_users, n_items)
    assert scores.std() > 0.01  # not a degenerate constant model
    torch.testing.assert_close(scores, logits, atol=1e-5, rtol=0)
    # the item bias is folded in: the last user coordinate is 1
    assert torch.equal(user_vectors[:, -1], torch.ones(n_users))


# ---------------------------------------------------------------------------- funnel


def test_funnel_on_hand_made_logits(small) -> None:
    model = _fresh_model(small)
    click = torch.tensor([0.0, 2.0, -30.0, 30.0, -3.0])
    purchase = torch.tensor([0.0, -1.0, 5.0, 40.0, -20.0])
    outputs = {"click": click, "purchase": purchase, "rating": torch.full((5,), 3.0)}
    predictions = model.predictions(outputs)
    assert set(predictions) == {"p_click", "p_purchase", "p_purchase_given_click", "rating_pred"}
    torch.testing.assert_close(predictions["p_purchase_given_click"], torch.sigmoid(purchase))
    assert predictions["p_click"][0].item() == pytest.approx(0.5)
    assert predictions["p_purchase"][0].item() == pytest.approx(0.25)
    expected = torch.sigmoid(click) * torch.sigmoid(purchase)
    torch.testing.assert_close(predictions["p_purchase"], expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(predictions["p_click"], torch.sigmoid(click), rtol=1e-6, atol=0)
    assert torch.equal(predictions["rating_pred"], outputs["rating"])


def test_funnel_on_model_outputs(small) -> None:
    model = _fresh_model(small)
    # push the purchase head to large logits so that p(purchase | click) ~ 1
    with torch.no_grad():
        model.heads["purchase"].net[-1].bias.fill_(25.0)
    users = torch.randint(0, model.user_encoder.id_embedding.num_embeddings, (300,))
    items = torch.randint(0, model.item_encoder.id_embedding.num_embeddings, (300,))
    with torch.no_grad():
        outputs = model(users, items)
        predictions = model.predictions(outputs)
    p_click, p_purchase = predictions["p_click"], predictions["p_purchase"]
    expected = p_click * torch.sigmoid(outputs["purchase"])
    torch.testing.assert_close(p_purchase, expected, rtol=1e-6, atol=0)
    assert bool((p_purchase <= p_click).all())


# ---------------------------------------------------------------------------- losses


def test_masked_losses_hand_computed(small) -> None:
    config, _ = small
    nan = float("nan")
    outputs = {
        "click": torch.tensor([0.0, 2.0, -1.0]),
        "purchase": torch.tensor([0.0, 1.0, 3.0]),
        "rating": torch.tensor([3.5, 100.0, 2.0]),
    }
    labels = {
        "click": torch.tensor([1.0, 0.0, 1.0]),
        "purchase": torch.tensor([1.0, 0.0, nan]),
        "rating": torch.tensor([4.0, nan, 5.0]),
    }
    model = _fresh_model(small)
    losses = task_losses(outputs, model.log_probabilities(outputs), labels, config.tasks)

    def sig(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    click = (math.log(2.0) + math.log(1.0 + math.exp(2.0)) + math.log(1.0 + math.exp(1.0))) / 3
    purchase = (-math.log(0.25) - math.log(1.0 - sig(2.0) * sig(1.0))) / 2  # row 3 masked
    rating = ((3.5 - 4.0) ** 2 + (2.0 - 5.0) ** 2) / 2  # row 2 (prediction 100) masked
    assert losses["click"].item() == pytest.approx(click, rel=1e-5)
    assert losses["purchase"].item() == pytest.approx(purchase, rel=1e-5)
    assert losses["rating"].item() == pytest.approx(rating, rel=1e-6)


def test_task_without_any_label_has_zero_loss_and_finite_gradient(small) -> None:
    config, _ = small
    prediction = torch.tensor([1.0, 2.0], requires_grad=True)
    outputs = {"click": torch.zeros(2), "purchase": torch.zeros(2), "rating": prediction}
    labels = {
        "click": torch.ones(2),
        "purchase": torch.ones(2),
        "rating": torch.tensor([float("nan"), float("nan")]),
    }
    model = _fresh_model(small)
    losses = task_losses(outputs, model.log_probabilities(outputs), labels, config.tasks)
    assert losses["rating"].item() == 0.0
    losses["rating"].backward()
    assert torch.equal(prediction.grad, torch.zeros(2))


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("task", ["click", "purchase", "rating"])
def test_every_head_trains_the_shared_id_embeddings(small, task: str) -> None:
    config, features = small
    model = _fresh_model(small)
    data = TensorData.from_frame(features.train, config.tasks, features.transform)
    assert (~torch.isnan(data.labels["rating"])).sum() > 0
    outputs = model(data.users, data.items)
    losses = task_losses(outputs, model.log_probabilities(outputs), data.labels, config.tasks)
    losses[task].backward()
    for encoder in (model.user_encoder, model.item_encoder):
        grad = encoder.id_embedding.weight.grad
        assert grad is not None and grad.abs().sum() > 0, task
    head_grad = [p.grad for p in model.heads[task].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in head_grad), task
    # the rating loss does not touch the click head; the purchase loss (funnel) does
    click_grads = [p.grad for p in model.heads["click"].parameters()]
    touched = any(g is not None and g.abs().sum() > 0 for g in click_grads)
    assert touched == (task in ("click", "purchase"))


@pytest.mark.parametrize("id_dropout", [0.0, 0.5])
def test_id_dropout_trains_the_unknown_rows_and_only_in_training(small, id_dropout) -> None:
    config, features = small
    torch.manual_seed(3)
    train = TensorData.from_frame(features.train, config.tasks, features.transform)
    model = build_model(
        features.transform,
        dataclasses.replace(SMALL_MODEL, id_dropout=id_dropout),
        config.tasks,
        train.label_means(),
    )
    encoder = model.item_encoder
    inputs = encoder.lookup(train.items)
    unknown = dataclasses.replace(inputs, ids=torch.full_like(inputs.ids, UNKNOWN))
    known_vectors = encoder.eval().encode(inputs)
    unknown_vectors = encoder.encode(unknown)
    # served (eval): every id reads its own row
    assert torch.equal(encoder.encode(inputs), known_vectors)
    encoder.train()
    torch.manual_seed(4)
    trained = encoder.encode(inputs)
    as_known = torch.isclose(trained, known_vectors).all(dim=1)
    as_unknown = torch.isclose(trained, unknown_vectors).all(dim=1)
    assert bool((as_known | as_unknown).all())  # each row: its own id or the unknown one
    share = float(as_unknown.float().mean())
    assert share == pytest.approx(id_dropout, abs=0.05)
    # the unknown row gets a gradient from the task losses only with id dropout
    model.train()
    outputs = model(train.users, train.items)
    losses = task_losses(outputs, model.log_probabilities(outputs), train.labels, config.tasks)
    losses["click"].backward()
    for side in (model.user_encoder, model.item_encoder):
        unknown_grad = side.id_embedding.weight.grad[UNKNOWN].abs().sum()
        assert (unknown_grad > 0) == (id_dropout > 0)


def test_id_dropout_must_be_a_probability() -> None:
    with pytest.raises(RecsysError, match=r"model\.id_dropout"):
        config_from_dict({"model": {"id_dropout": 1.0}})


# ---------------------------------------------------------------------------- planted structure


@pytest.mark.slow
def test_model_recovers_planted_structure(tmp_path: Path) -> None:
    """Measured (seed 42, one thread): click AUC 0.762 vs oracle 0.790, purchase AUC 0.793,
    rating RMSE 0.842 vs 1.035 for the training mean, recall@10 0.179 vs popularity 0.149."""
    config = config_from_dict(
        {
            "pipeline": {"output_dir": str(tmp_path / "run"), "seed": 42},
            "source": {"synthetic": {"n_users": 400, "n_items": 100, "impressions_per_user": 150}},
            "model": {"embedding_dim": 16, "hidden_dims": [32], "output_dim": 16},
            "training": {
                "epochs": 8,
                "batch_size": 512,
                "learning_rate": 0.01,
                "progress": False,
            },
            "evaluation": {"k": [10], "baselines": ["popularity"], "bootstrap": 0},
            "tracking": {"enabled": False},
        }
    )
    with one_torch_thread():
        features = features_stage(config)
        recommender, _ = train_stage(config, features)
        metrics = evaluate_stage(config, recommender, features)

    assert metrics["test/click_auc"] > 0.7
    assert metrics["oracle/click_auc"] - metrics["test/click_auc"] < 0.06
    assert metrics["test/purchase_auc"] > 0.7
    train_mean = features.train["rating"].mean()
    rated = features.test.filter(pl.col("rating").is_not_null())["rating"].to_numpy()
    baseline_rmse = float(np.sqrt(np.mean((rated - train_mean) ** 2)))
    assert metrics["test/rating_rmse"] < 0.92 * baseline_rmse
    # the model beats popularity at ranking too
    assert metrics["test/recall@10"] > metrics["popularity/recall@10"]
    assert (tmp_path / "run" / "reports" / "metrics.json").is_file()


def test_in_batch_softmax_loss_by_hand() -> None:
    from recsys_mtl.objectives.losses import in_batch_softmax_loss

    users = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    items = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    item_idx = torch.tensor([5, 6, 5])  # rows 0 and 2 share an item: not each other's negative
    log_q = torch.zeros(10)
    log_q[5], log_q[6] = math.log(0.5), math.log(0.25)
    logits = users @ items.T - log_q[item_idx].unsqueeze(0)
    expected = []
    for i, allowed in enumerate([[0, 1], [0, 1, 2], [1, 2]]):
        row = logits[i, allowed]
        expected.append(-(logits[i, i] - torch.logsumexp(row, 0)))
    loss = in_batch_softmax_loss(users, items, item_idx, log_q)
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    # one clicked row: nothing to contrast, no loss
    assert in_batch_softmax_loss(users[:1], items[:1], item_idx[:1]).item() == 0.0


def test_refit_on_the_training_rows_reproduces_the_selected_model(small) -> None:
    """refit() replays the selected number of epochs with the same seeds: on the same rows
    it must give the very weights fit() selected; on more rows, different ones."""
    config, features = small
    tasks = config.tasks
    train = TensorData.from_frame(features.train, tasks, features.transform)
    validation = TensorData.from_frame(features.validation, tasks, features.transform)
    cfg = TrainingSection(epochs=4, batch_size=64, learning_rate=0.02, patience=5, progress=False)

    def trainer(seed: int = 0) -> Trainer:
        model = _fresh_model(small, seed=seed)
        return Trainer(model, tasks, WEIGHTING["static"](tasks), cfg, seed=3)

    first = trainer()
    selected = first.fit(train, validation)
    again = trainer()
    result = again.refit(train, selected)
    assert result.best_epoch == selected.best_epoch
    for (name, a), b in zip(
        first.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    more = trainer()
    more.refit(TensorData.concat([train, validation]), selected)
    assert not torch.equal(
        more.model.user_encoder.id_embedding.weight, first.model.user_encoder.id_embedding.weight
    )


def test_static_retrieval_items_ignore_item_history_only_in_the_click_head(small) -> None:
    config, features = small
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL_MODEL, static_retrieval_items=True)
    model = build_model(features.transform, cfg, config.tasks).eval()
    data = TensorData.from_frame(features.train, config.tasks, features.transform)
    assert data.item_rows.numeric.shape[1] + data.item_rows.categorical.shape[1] > 0
    batch = data.take(slice(0, 50))
    # the same items as of other rows' times: other history, other recency
    shuffled = data.take(torch.randperm(len(data))[:50])
    other_times = TensorData(
        batch.users, batch.items, batch.user_rows, shuffled.item_rows, batch.labels
    )
    with torch.no_grad():
        out = model(batch.users, batch.items, batch.user_rows, batch.item_rows)
        moved = model(
            other_times.users, other_times.items, other_times.user_rows, other_times.item_rows
        )
        users, items = model.encode(batch.users, batch.items, batch.user_rows, batch.item_rows)
        logits = (model.user_vectors(users) * model.item_vectors(items)).sum(-1)
        served = model.item_vectors(model.item_encoder(batch.items))  # no rows at all
    torch.testing.assert_close(out["click"], logits)  # still the exported inner product
    torch.testing.assert_close(out["click"], moved["click"])  # blind to item time
    torch.testing.assert_close(model.item_vectors(items), served)
    assert not torch.allclose(out["purchase"], moved["purchase"])  # the others are not
    assert not torch.allclose(out["rating"], moved["rating"])


def test_rarely_seen_ids_share_the_unknown_row_and_keep_their_side_features() -> None:
    raw = {
        "pipeline": {"seed": 11},
        "source": {"synthetic": {"n_users": 50, "n_items": 30, "impressions_per_user": 20}},
        "tracking": {"enabled": False},
    }
    config = _small_config()
    data = generate_synthetic(config.source.synthetic, config.pipeline.seed)
    counts = np.bincount(build_features(data, config).train["item_idx"].to_numpy(), minlength=32)[
        2:
    ]  # every impression is a training event here (no sampled negatives)
    threshold = int(np.median(counts[counts > 0]))
    raw["features"] = {"id_min_count": threshold}
    config = config_from_dict(raw)
    features = build_features(data, config)
    spec = features.transform.items.spec
    frequent = int((counts >= threshold).sum())
    assert 0 < frequent < counts.size
    assert spec.id_rows == 2 + frequent  # the vocabulary orders ids by count
    assert type(spec).from_dict(dataclasses.asdict(spec)).id_rows == spec.id_rows
    torch.manual_seed(0)
    train = TensorData.from_frame(features.train, config.tasks, features.transform)
    model = build_model(features.transform, SMALL_MODEL, config.tasks, train.label_means())
    encoder = model.item_encoder.eval()
    assert encoder.id_embedding.num_embeddings == spec.id_rows
    ids = torch.arange(2, spec.id_vocab_size)
    inputs = encoder.lookup(ids)
    as_unknown = encoder.encode(dataclasses.replace(inputs, ids=torch.full_like(ids, UNKNOWN)))
    same = torch.isclose(encoder.encode(inputs), as_unknown).all(dim=1)
    # a rare id reads the unknown row beside its own side features; a frequent one its own
    assert torch.equal(same, ids >= spec.id_rows)
    sides = torch.isclose(as_unknown[:, None], as_unknown[None]).all(dim=2)
    assert not sides[ids >= spec.id_rows][:, ids >= spec.id_rows].all()  # features differ
    # the unknown row is trained by the rare ids' rows (no id dropout needed)
    model.train()
    outputs = model(train.users, train.items)
    losses = task_losses(outputs, model.log_probabilities(outputs), train.labels, config.tasks)
    losses["click"].backward()
    assert model.item_encoder.id_embedding.weight.grad[UNKNOWN].abs().sum() > 0
    user_counts = np.bincount(features.train["user_idx"].to_numpy())[2:]
    assert features.transform.users.spec.id_rows == 2 + int((user_counts >= threshold).sum())


def test_id_min_count_must_be_positive() -> None:
    with pytest.raises(RecsysError, match=r"features\.id_min_count"):
        config_from_dict({"features": {"id_min_count": 0}})


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_list_features_pool_as_a_padded_embedding_would(sparse: bool) -> None:
    """The list lookup (`index_select` on dense tables) gives the pooled values and the
    gradients of `nn.Embedding(padding_idx=0)`: the padding row reads as zero and gets no
    gradient, repeated tokens add up."""
    from recsys_mtl.model.embeddings import _list_rows

    torch.manual_seed(0)
    table = torch.nn.Embedding(12, 4, padding_idx=0, sparse=sparse)
    tokens = torch.tensor([[3, 5, 0, 0], [0, 0, 0, 0], [7, 7, 2, 0]])
    mask = (tokens > 0).unsqueeze(-1).float()
    upstream = torch.randn(3, 4)

    def pooled_and_grad(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        table.weight.grad = None
        pooled = (rows * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        pooled.backward(upstream)
        grad = table.weight.grad
        return pooled.detach(), grad.to_dense() if grad.is_sparse else grad

    expected, expected_grad = pooled_and_grad(table(tokens))
    pooled, grad = pooled_and_grad(_list_rows(table, tokens))
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(grad[0]) == 0
    assert torch.count_nonzero(pooled[1]) == 0  # an empty list pools to zeros
    torch.testing.assert_close(grad[7], 2 * upstream[2] / 3)  # token 7 twice in row 2
