"""Crash and resume: a training run killed with SIGKILL mid-epoch, resumed with
--resume, ends with the very model and metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mlflow
from recsys_mtl.recommender import Recommender

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
SETTINGS = [
    "source.synthetic.n_users=1000",
    "source.synthetic.impressions_per_user=100",
    f"training.epochs={EPOCHS}",
    f"training.patience={EPOCHS}",
    "training.average_decay=0.99",  # averaged weights are part of the state
    "training.log_every=20",
    "model.dropout=0.1",  # the random state is part of the state
    "objectives.weighting=uncertainty",  # so are the weighting's parameters
    "tracking.experiment=resume-test",
    "tracking.log_model=false",
]


def _command(stage: str, output: Path, *extra: str) -> list[str]:
    sets = [a for s in [*SETTINGS, f"pipeline.output_dir={output}"] for a in ("--set", s)]
    return [sys.executable, "-m", "recsys_mtl", stage, "pipelines/smoke.toml", *sets, *extra]


def _untimed(history: list[dict]) -> list[dict]:
    timed = {"train/epoch_seconds", "train/samples_per_second"}
    return [{k: v for k, v in row.items() if k not in timed} for row in history]


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return 0


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking_uri}
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def run(command: list[str]) -> str:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run(_command("features", whole))
    shutil.copytree(whole / "features", killed / "features")
    run(_command("train", whole))

    # Kill the second run part-way through its third epoch (timed from its second).
    process = subprocess.Popen(
        _command("train", killed),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    finished_at = {}
    while _checkpoint_epoch(last) < 2 and process.poll() is None:
        assert time.monotonic() < deadline
        finished_at.setdefault(_checkpoint_epoch(last), time.monotonic())
        time.sleep(0.01)
    epoch_seconds = time.monotonic() - finished_at.get(1, time.monotonic())
    time.sleep(0.4 * epoch_seconds)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _checkpoint_epoch(last) == 2  # the third epoch never finished
    assert not (killed / "model").exists()

    run(_command("train", killed, "--resume"))

    one = json.loads((whole / "training" / "history.json").read_text())
    two = json.loads((killed / "training" / "history.json").read_text())
    # every epoch's metrics, exactly (the wall-clock ones aside)
    assert _untimed(two["history"]) == _untimed(one["history"])
    assert all(row["train/samples_per_second"] > 0 for row in two["history"])
    assert two["best_epoch"] == one["best_epoch"]
    assert two["steps"] == one["steps"]
    a = Recommender.load(whole / "model").model.state_dict()
    b = Recommender.load(killed / "model").model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a), "weights differ"  # bitwise

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("resume-test").experiment_id
    runs = client.search_runs(
        [experiment], "tags.stage = 'train'", order_by=["attributes.start_time ASC"]
    )
    assert len(runs) == 2  # the uninterrupted run and the killed-then-resumed one
    resumed = runs[1]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags.get("resumed") == "true"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val/click_auc")]
    assert sorted(set(steps)) == list(range(1, EPOCHS + 1))

    # A checkpoint resumes only the configuration that wrote it.
    refused = subprocess.run(
        _command("train", killed, "--resume", "--set", "training.learning_rate=0.5"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2
    assert "written for another configuration" in refused.stderr
    assert "Traceback" not in refused.stderr
    c = Recommender.load(killed / "model").model.state_dict()
    assert all(torch.equal(b[name], c[name]) for name in b)  # the bundle is untouched
