"""Data-parallel training under torchrun: shares, and 2 processes against 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mlflow
from recsys_mtl.errors import RecsysError
from recsys_mtl.training.distributed import Distributed

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.parametrize("rows", [0, 1, 5, 6, 7, 1000, 1001])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_shares_cover_every_row_with_equal_lengths(rows: int, world: int) -> None:
    shares = [Distributed(rank, world).share(rows) for rank in range(world)]
    lengths = {sum(b - a for a, b in share) for share in shares}
    assert len(lengths) == 1  # every rank takes the same number of steps
    covered = [row for share in shares for a, b in share for row in range(a, b)]
    assert sorted(set(covered)) == list(range(rows))  # nothing left out
    assert len(covered) - rows < world  # padding wraps at most world - 1 rows
    assert all(0 <= a < b <= rows for share in shares for a, b in share)


def test_single_process_share_is_everything() -> None:
    assert Distributed().share(10) == [(0, 10)]
    assert Distributed().local_batch_size(1000) == 1000


def test_batch_size_must_divide_among_ranks() -> None:
    assert Distributed(0, 4).local_batch_size(1024) == 256
    with pytest.raises(RecsysError, match="not divisible by the 3 processes"):
        Distributed(0, 3).local_batch_size(1024)


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.heavy
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_two_processes_match_one(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m recsys_mtl train` trains one model on two ranks
    (each its own half of the rows, 256 rows a step) whose validation metrics match
    one process (512 rows a step) within tolerance; rank 0 alone logs one MLflow run
    and writes checkpoints and the bundle. The trainer itself refuses to finish if the
    ranks' parameters differ after any epoch."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    experiment = "distributed-test"
    settings = [
        "source.synthetic.n_users=300",
        "source.synthetic.impressions_per_user=150",
        "model.embedding_dim=16",
        "model.hidden_dims=[32]",
        "model.output_dim=16",
        "training.epochs=4",
        "training.patience=4",
        "training.learning_rate=0.01",
        "training.ranking_users=100",
        "features.row_group_rows=4096",
        f"tracking.experiment={experiment}",
        "tracking.log_model=false",
    ]

    def overrides(folder: Path) -> list[str]:
        return [arg for s in [*settings, f"pipeline.output_dir={folder}"] for arg in ("--set", s)]

    single, parallel = tmp_path / "single", tmp_path / "parallel"
    command = [sys.executable, "-m", "recsys_mtl"]
    _run([*command, "features", "pipelines/smoke.toml", *overrides(single)], env)
    shutil.copytree(single / "features", parallel / "features")
    _run([*command, "train", "pipelines/smoke.toml", *overrides(single)], env)
    out = _run(
        [
            str(TORCHRUN),
            "--standalone",  # a free local port for the rendezvous
            "--nproc-per-node",
            "2",
            "-m",
            "recsys_mtl",
            "train",
            "pipelines/smoke.toml",
            *overrides(parallel),
        ],
        {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
    )
    assert "trained on 2 processes" in out
    one = json.loads((single / "training" / "history.json").read_text())
    two = json.loads((parallel / "training" / "history.json").read_text())
    assert len(two["history"]) == len(one["history"]) == 4
    # Measured: final-epoch click AUC 0.7631 vs 0.7596, purchase AUC 0.7885 vs 0.7850,
    # rating RMSE 0.829 vs 0.823, recall@10 0.222 vs 0.243 (one process vs two).
    for a, b in zip(one["history"], two["history"], strict=True):
        for metric in ("val/click_auc", "val/purchase_auc"):
            assert abs(a[metric] - b[metric]) < 0.025, (metric, a[metric], b[metric])
    a, b = one["history"][-1], two["history"][-1]
    for metric in ("val/click_auc", "val/purchase_auc"):
        assert abs(a[metric] - b[metric]) < 0.015, (metric, a[metric], b[metric])
    assert abs(a["val/rating_rmse"] / b["val/rating_rmse"] - 1) < 0.03
    assert abs(a["val/recall@10"] - b["val/recall@10"]) < 0.05
    assert two["history"][-1]["val/click_auc"] > two["history"][0]["val/click_auc"]
    assert (parallel / "checkpoints" / "best.pt").is_file()
    assert (parallel / "model" / "manifest.json").is_file()

    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    parallel_runs = [r for r in runs if r.data.params.get("distributed/world_size") == "2"]
    assert len(parallel_runs) == 1  # rank 0 alone logs
    history = client.get_metric_history(parallel_runs[0].info.run_id, "val/click_auc")
    assert [m.step for m in history] == [1, 2, 3, 4]
