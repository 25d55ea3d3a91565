"""Large id tables: sparse gradients and a row-wise Adam update only the batch's rows,
and a model trained that way still recovers the planted structure."""

from __future__ import annotations

import pytest
import torch
from planted import assert_near_the_oracle, planted_config, train_on_one_thread

from recsys_mtl.config import config_from_dict
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.features.pipeline import build_features
from recsys_mtl.model.multitask import build_model
from recsys_mtl.objectives.losses import task_losses
from recsys_mtl.pipeline import features_stage
from recsys_mtl.training.averaging import ParameterAverage
from recsys_mtl.training.optimizers import build_optimizers
from recsys_mtl.training.tensors import TensorData


def test_sparse_tables_update_only_the_rows_of_the_batch() -> None:
    config = config_from_dict(
        {
            "source": {"synthetic": {"n_users": 60, "n_items": 40, "impressions_per_user": 25}},
            "model": {"embedding_dim": 8, "hidden_dims": [16], "output_dim": 6},
            "tracking": {"enabled": False},
        }
    )
    features = build_features(generate_synthetic(config.source.synthetic, 5), config)
    train = TensorData.from_frame(features.train, config.tasks, features.transform)
    torch.manual_seed(0)
    model = build_model(features.transform, config.model, config.tasks, train.label_means())
    # threshold = the user table's size: that table (and any as large) goes sparse
    user_table = model.user_encoder.id_embedding
    optimizer, sparse = build_optimizers(
        model, [], learning_rate=0.01, weight_decay=1e-4, sparse_rows=user_table.num_embeddings
    )
    assert "user_encoder.id_embedding.weight" in sparse and user_table.sparse
    assert not model.item_encoder.id_embedding.sparse or (
        model.item_encoder.id_embedding.num_embeddings >= user_table.num_embeddings
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = train.take(slice(0, 32))
    outputs = model(batch.users, batch.items, batch.user_rows, batch.item_rows)
    losses = task_losses(outputs, model.log_probabilities(outputs), batch.labels, config.tasks)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    assert user_table.weight.grad.is_sparse
    optimizer.step()
    in_batch = torch.zeros(user_table.num_embeddings, dtype=torch.bool)
    in_batch[batch.users] = True
    changed = (user_table.weight.detach() != before["user_encoder.id_embedding.weight"]).any(1)
    assert torch.equal(changed, in_batch & (torch.arange(len(in_batch)) != 0))  # not padding
    dense = [n for n in before if n not in sparse]
    assert any(not torch.equal(before[n], dict(model.named_parameters())[n]) for n in dense)
    # averaging leaves the sparse table out
    average = ParameterAverage(model, 0.9, skip=set(sparse))
    assert "user_encoder.id_embedding.weight" not in average.shadow
    assert set(average.shadow) == set(dense)


def test_zero_keeps_every_table_dense() -> None:
    layer = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    _, sparse = build_optimizers(layer, [], learning_rate=0.1, weight_decay=0.0, sparse_rows=0)
    assert sparse == [] and not layer[0].sparse


@pytest.mark.slow
def test_training_with_sparse_tables_recovers_planted_structure(tmp_path) -> None:
    config = planted_config(tmp_path, {}, {"epochs": 6, "sparse_embedding_rows": 1})
    features = features_stage(config)
    _, metrics = train_on_one_thread(config, features)
    assert_near_the_oracle(metrics, features)
