"""Out-of-core training: Parquet row ranges, streamed epochs, and a streamed model that
still recovers the planted structure without ever loading the training split."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
import torch
from planted import assert_near_the_oracle, one_torch_thread, planted_config

from recsys_mtl.config import config_from_dict
from recsys_mtl.data.synthetic import generate_synthetic
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import build_features, load_features, save_features
from recsys_mtl.features.shards import SplitShards
from recsys_mtl.pipeline import evaluate_stage, features_stage, train_stage
from recsys_mtl.training.distributed import Distributed, resolve_device
from recsys_mtl.training.stream import StreamedRows, split_item_clicks, split_label_means
from recsys_mtl.training.tensors import TensorData


def _frame(rows: int, offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row": np.arange(offset, offset + rows),
            "value": np.arange(offset, offset + rows) * 0.5,
            "recent": pl.Series(
                [[i, i + 1, i + 2] for i in range(offset, offset + rows)],
                dtype=pl.Array(pl.Int32, 3),
            ),
        }
    )


def test_row_ranges_and_takes_across_shards_and_splits(tmp_path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    _frame(300).write_parquet(first / "part-00000.parquet", row_group_size=64)
    _frame(150, 300).write_parquet(first / "part-00001.parquet", row_group_size=64)
    _frame(70, 450).write_parquet(second / "part-00000.parquet", row_group_size=64)
    everything = pl.concat([_frame(300), _frame(150, 300), _frame(70, 450)])
    shards = SplitShards([first, second])
    assert shards.rows == 520
    rng = np.random.default_rng(0)
    for start, stop in [(0, 520), (63, 65), (299, 301), (440, 470), (7, 7), (519, 520)]:
        assert shards.read(start, stop).equals(everything.slice(start, stop - start))
    picked = rng.choice(520, size=90, replace=True)
    assert shards.take(picked).equals(everything[picked])
    assert shards.read(10, 20, columns=["value"]).columns == ["value"]
    blocks = shards.blocks(30, 400)
    assert blocks[0] == (30, 64) and blocks[-1][1] == 400
    assert all(b[0] == a[1] for a, b in itertools.pairwise(blocks))
    with pytest.raises(ValueError, match="outside"):
        shards.read(500, 521)
    with pytest.raises(RecsysError, match="no Parquet shards"):
        SplitShards(tmp_path / "missing")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = config_from_dict(
        {
            "source": {"synthetic": {"n_users": 120, "n_items": 50, "impressions_per_user": 30}},
            "tracking": {"enabled": False},
        }
    )
    features = build_features(generate_synthetic(config.source.synthetic, 3), config)
    folder = tmp_path_factory.mktemp("features")
    save_features(features, folder, shard_rows=1000, row_group_rows=97)
    return config, features, folder


def _keys(data: TensorData) -> list[tuple[int, int, float]]:
    clicks = data.labels["click"].tolist()
    return sorted(zip(data.users.tolist(), data.items.tolist(), clicks, strict=True))


def test_a_streamed_epoch_visits_every_row_once_in_full_batches(saved) -> None:
    config, features, folder = saved
    shards = SplitShards(folder / "train")
    in_memory = TensorData.from_frame(features.train, config.tasks, features.transform)
    assert shards.rows == len(in_memory)
    rows = StreamedRows(shards, [(0, shards.rows)], config.tasks, features.transform, 300)
    assert len(rows.buffers(torch.Generator().manual_seed(0))) > 3
    batches = list(rows.epoch_batches(torch.Generator().manual_seed(1), 64))
    assert len(batches) == -(-len(in_memory) // 64)
    assert all(len(b) == 64 for b in batches[:-1])
    streamed = TensorData.concat(batches)
    assert _keys(streamed) == _keys(in_memory)
    again = TensorData.concat(list(rows.epoch_batches(torch.Generator().manual_seed(1), 64)))
    assert torch.equal(again.users, streamed.users)  # seeded: the same order
    other = TensorData.concat(list(rows.epoch_batches(torch.Generator().manual_seed(2), 64)))
    assert not torch.equal(other.users, streamed.users)
    # row features come through the Parquet round trip unchanged
    first = shards.take(np.array([5]))
    assert first["user_idx"][0] == features.train["user_idx"][5]


def test_split_statistics_equal_the_in_memory_ones(saved) -> None:
    config, features, folder = saved
    shards = SplitShards(folder / "train")
    data = TensorData.from_frame(features.train, config.tasks, features.transform)
    means = split_label_means(shards, config.tasks)
    for task, value in data.label_means().items():
        assert means[task] == pytest.approx(value, rel=1e-5)
    n_items = features.transform.items.ids.size
    clicked = data.labels["click"] == 1
    expected = torch.bincount(data.items[clicked], minlength=n_items).float()
    assert torch.equal(split_item_clicks(shards, "click", n_items), expected)


def test_a_rank_streams_only_its_share(saved) -> None:
    config, features, folder = saved
    shards = SplitShards(folder / "train")
    seen = []
    for rank in range(3):
        ranges = Distributed(rank, 3).share(shards.rows)
        rows = StreamedRows(shards, ranges, config.tasks, features.transform, 200)
        seen.append(TensorData.concat(list(rows.epoch_batches(torch.Generator(), 50))))
    assert len({len(s) for s in seen}) == 1
    everything = TensorData.from_frame(features.train, config.tasks, features.transform)
    assert set(_keys(TensorData.concat(seen))) == set(_keys(everything))


@pytest.mark.slow
def test_streamed_training_recovers_planted_structure_without_loading_the_split(
    tmp_path,
) -> None:
    config = planted_config(
        tmp_path,
        {},
        {"epochs": 6, "in_memory_rows": 0, "stream_buffer_rows": 8192},
    )
    config.features.row_group_rows = 2048
    features_stage(config)
    features = load_features(tmp_path / "features")
    with one_torch_thread():
        recommender, _ = train_stage(config, features)
        assert not features.splits.is_loaded("train")  # streamed, never read whole
        metrics = evaluate_stage(config, recommender, features)
    assert_near_the_oracle(metrics, features)


def test_devices_are_checked() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RecsysError, match="sees no GPU"):
            resolve_device("cuda")
    with pytest.raises(RecsysError, match=r"unknown training\.device 'gpu'"):
        config_from_dict({"training": {"device": "gpu"}})
    with pytest.raises(RecsysError, match=r"unknown training\.device 'cpu:1'"):
        config_from_dict({"training": {"device": "cpu:1"}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_on_the_gpu_recovers_planted_structure(tmp_path) -> None:
    config = planted_config(tmp_path, {}, {"epochs": 6, "device": "cuda"})
    features = features_stage(config)
    recommender, _ = train_stage(config, features)
    assert next(recommender.model.parameters()).device.type == "cpu"  # saved for CPU
    metrics = evaluate_stage(config, recommender, features)
    assert_near_the_oracle(metrics, features)
