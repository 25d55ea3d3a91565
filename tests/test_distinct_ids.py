"""`training.deduplicate_ids`: a batch encodes each distinct id of a side once.

Where a side's encoding depends on the id alone (no row features, no dropout), the
model's outputs, the losses and one training epoch must be what they are with one
encoded row per batch row; where it does not, the model must say so."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from planted import one_torch_thread

from recsys_mtl.config import ModelSection, PipelineConfig, TrainingSection, config_from_dict
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.features.pipeline import FeatureSet, build_features
from recsys_mtl.model.multitask import MultiTaskModel, build_model
from recsys_mtl.objectives.losses import task_losses
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.training.tensors import TensorData
from recsys_mtl.training.trainer import Trainer

STATIC_FEATURES = {"history": False, "recent_items": 0, "recent_ratings": 0, "time": []}
MODEL = ModelSection(
    sharing="mmoe", embedding_dim=8, hidden_dims=[16], output_dim=6, head_hidden_dim=8
)


def _features(**features: object) -> tuple[PipelineConfig, FeatureSet]:
    config = config_from_dict(
        {
            "pipeline": {"seed": 11},
            "source": {"synthetic": {"n_users": 40, "n_items": 25, "impressions_per_user": 20}},
            "features": features,
            "tracking": {"enabled": False},
        }
    )
    data = generate_synthetic(config.source.synthetic, config.pipeline.seed)
    return config, build_features(data, config)


@pytest.fixture(scope="module")
def static() -> tuple[PipelineConfig, FeatureSet]:
    """Side features only: both sides' encodings depend on the id alone."""
    return _features(**STATIC_FEATURES)


def _model(small: tuple[PipelineConfig, FeatureSet], cfg: ModelSection = MODEL) -> MultiTaskModel:
    config, features = small
    torch.manual_seed(0)
    rows = TensorData.from_frame(features.train, config.tasks, features.transform)
    return build_model(features.transform, cfg, config.tasks, rows.label_means())


def _batch(small: tuple[PipelineConfig, FeatureSet], n: int = 300) -> TensorData:
    config, features = small
    rows = TensorData.from_frame(features.train, config.tasks, features.transform)
    return rows.take(torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))[:n])


SHARINGS = ["hard", "none", "soft_l2", "cross_stitch", "mmoe", "ple"]


@pytest.mark.parametrize("sharing", SHARINGS)
def test_distinct_ids_give_the_same_outputs_and_gradients(static, sharing: str) -> None:
    config, _ = static
    cfg = dataclasses.replace(MODEL, sharing=sharing, static_retrieval_items=sharing == "hard")
    model = _model(static, cfg).train()
    batch = _batch(static)
    assert model.distinct_sides() == (True, True)

    def loss_and_grads(distinct: tuple[bool, bool]):
        model.zero_grad()
        encoded = model.encode_batch(
            batch.users, batch.items, batch.user_rows, batch.item_rows, distinct
        )
        outputs = model.forward_batch(encoded)
        losses = task_losses(outputs, model.log_probabilities(outputs), batch.labels, config.tasks)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return encoded, outputs, grads

    per_row, expected, expected_grads = loss_and_grads((False, False))
    distinct, outputs, grads = loss_and_grads((True, True))
    n_users, n_items = batch.users.unique().numel(), batch.items.unique().numel()
    assert per_row.users.shape[0] == len(batch) and per_row.user_index is None
    # each distinct id encoded once (rows padded to a multiple of 64 with PAD ids, never
    # read), and every batch row reads its own id's row
    assert distinct.users.shape[0] == 64 * -(-n_users // 64) < len(batch)
    assert distinct.items.shape[0] == 64 * -(-n_items // 64) < len(batch)
    assert distinct.user_index is not None and distinct.user_index.max() < n_users
    torch.testing.assert_close(distinct.row_users(), per_row.users, rtol=0, atol=0)
    torch.testing.assert_close(distinct.row_items(), per_row.items, rtol=0, atol=0)
    for name in expected:
        torch.testing.assert_close(outputs[name], expected[name], rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("static_items", [False, True], ids=["items", "static_items"])
@pytest.mark.parametrize("distinct", [False, True], ids=["per_row", "distinct"])
def test_the_retrieval_vectors_of_a_batch_are_those_the_index_is_built_from(
    static, distinct: bool, static_items: bool
) -> None:
    """`forward_batch_and_vectors` (what the in-batch retrieval loss reads): the same
    outputs as `forward_batch`, and per batch row the user and item vectors that
    `user_vectors` / `item_vectors` export, whose inner product is the click logit."""
    cfg = dataclasses.replace(MODEL, sharing="hard", static_retrieval_items=static_items)
    model = _model(static, cfg).train()
    batch = _batch(static)
    encoded = model.encode_batch(
        batch.users, batch.items, batch.user_rows, batch.item_rows, (distinct, distinct)
    )
    outputs, (users, items) = model.forward_batch_and_vectors(encoded)
    expected = model.forward_batch(encoded)
    assert outputs.keys() == expected.keys()
    for name, output in expected.items():
        torch.testing.assert_close(outputs[name], output, rtol=1e-6, atol=1e-6)
    exported_users = model.user_vectors(encoded.row_users())
    exported_items = model.item_vectors(encoded.row_items())
    assert users.shape == exported_users.shape == (len(batch), MODEL.output_dim + 1)
    torch.testing.assert_close(users, exported_users, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(items, exported_items, rtol=1e-6, atol=1e-6)
    click = (users * items).sum(-1)
    torch.testing.assert_close(click, outputs[model.retrieval_task], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("sharing", "sparse_rows"),
    [("mmoe", 0), ("ple", 0), ("hard", 1)],
    ids=["mmoe", "ple", "sparse"],
)
def test_an_epoch_trains_the_same_model_with_distinct_ids(
    static, sharing: str, sparse_rows: int
) -> None:
    """The same parameters, losses, task relations and gate utilisation (each batch
    row counted once); also with sparse embedding gradients and the row-wise Adam
    (`sparse_embedding_rows = 1`: every table)."""
    config, features = static
    rows = TensorData.from_frame(features.train, config.tasks, features.transform)
    states = []
    for deduplicate in (False, True):
        model = _model(static, dataclasses.replace(MODEL, sharing=sharing))
        cfg = TrainingSection(
            batch_size=256,
            learning_rate=0.01,
            progress=False,
            relation_every=3,  # these batches stay per row
            retrieval_loss_weight=0.3,  # reads the batch rows' encodings
            deduplicate_ids=deduplicate,
            sparse_embedding_rows=sparse_rows,
        )
        trainer = Trainer(model, config.tasks, WEIGHTING["static"](config.tasks), cfg, seed=4)
        assert bool(trainer.sparse_tables) == bool(sparse_rows)
        with one_torch_thread():
            metrics = trainer.train_epoch(rows, 1)
        assert trainer._distinct == ((True, True) if deduplicate else (False, False))
        states.append((model.state_dict(), metrics, trainer.relations[1], trainer.gates[1]))
    (before, metrics_before, relations_before, gates_before) = states[0]
    (after, metrics_after, relations_after, gates_after) = states[1]
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=1e-4, atol=1e-5)
    for key in ("train/click_loss", "train/purchase_loss", "train/rating_loss"):
        assert metrics_after[key] == pytest.approx(metrics_before[key], rel=1e-4)
    torch.testing.assert_close(
        torch.tensor(relations_after), torch.tensor(relations_before), rtol=1e-3, atol=1e-4
    )
    assert gates_after.keys() == gates_before.keys()
    assert bool(gates_before) == (sharing != "hard")
    for name, gate in gates_before.items():
        assert gates_after[name]["rows"] == gate["rows"]
        torch.testing.assert_close(
            torch.tensor(gates_after[name]["matrix"]),
            torch.tensor(gate["matrix"]),
            atol=1e-5,
            rtol=1e-4,
        )


def test_sides_whose_encoding_is_not_the_id_alone_stay_per_row(static) -> None:
    assert _model(static).eval().distinct_sides() == (True, True)
    # dropout (per row) and random id dropout hold in training only
    dropout = _model(static, dataclasses.replace(MODEL, dropout=0.1))
    assert dropout.train().distinct_sides() == (False, False)
    assert dropout.eval().distinct_sides() == (True, True)
    id_dropout = _model(static, dataclasses.replace(MODEL, id_dropout=0.1))
    assert id_dropout.train().distinct_sides() == (False, False)
    # history and recency are row features: the user side (and recency's item side) vary
    with_history = _features(**{**STATIC_FEATURES, "history": True, "item_history": False})
    assert _model(with_history).train().distinct_sides() == (False, True)
    with_recency = _features(**{**STATIC_FEATURES, "time": ["recency"]})
    assert _model(with_recency).train().distinct_sides() == (False, False)


@pytest.mark.parametrize(
    ("weighting", "deduplicate", "expected"),
    [
        ("static", True, (True, True)),
        ("static", False, (False, False)),  # training.deduplicate_ids = false
        ("gradnorm", True, (False, False)),  # both read per-row gradients
        ("pcgrad", True, (False, False)),
    ],
)
def test_the_trainer_deduplicates_only_where_the_weighting_and_settings_allow(
    static, weighting: str, deduplicate: bool, expected: tuple[bool, bool]
) -> None:
    config, _ = static
    cfg = TrainingSection(progress=False, deduplicate_ids=deduplicate)
    trainer = Trainer(_model(static), config.tasks, WEIGHTING[weighting](config.tasks), cfg, 0)
    assert trainer._distinct_sides() == expected
