"""Sweeps: the grid syntax, the Pareto front by hand, and `recsys-mtl sweep` end to end
(nested MLflow runs, the table, the plot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_runner import cli

import mlflow
from recsys_mtl.errors import RecsysError
from recsys_mtl.sweep import pareto_front, parse_grid, selected_validation, split_values, summarise
from recsys_mtl.training.trainer import TrainingResult

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "smoke.toml"


def test_grid_values_keep_brackets_and_quotes() -> None:
    assert split_values("static,famo") == ["static", "famo"]
    assert split_values("[64,32],[16]") == ["[64,32]", "[16]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    grid = parse_grid(["objectives.weighting=static,famo", "model.hidden_dims=[64,32],[16]"])
    assert grid == {
        "objectives.weighting": ["static", "famo"],
        "model.hidden_dims": ["[64,32]", "[16]"],
    }
    for bad in (["weighting"], ["a="], ["=1,2"], ["a=1,,2"], ["a=1", "a=2"]):
        with pytest.raises(RecsysError, match="grid"):
            parse_grid(bad)


def test_pareto_front_by_hand() -> None:
    # (AUC up, RMSE down): the first dominates the third and fourth; the second has the
    # best RMSE; the fifth equals the first (neither is strictly better); NaN never counts
    values = np.array([[0.9, 1.0], [0.8, 0.9], [0.85, 1.1], [0.7, 1.2], [0.9, 1.0], [np.nan, 0.1]])
    front = pareto_front(values, [True, False])
    assert front.tolist() == [True, True, False, False, True, False]
    assert pareto_front(np.array([[1.0, 1.0]]), [True, True]).tolist() == [True]


def test_the_front_is_chosen_on_validation_not_on_test() -> None:
    # on test "a" dominates "b"; on validation "b" dominates "a": the front is ["b"]
    runs = pl.DataFrame(
        {
            "objectives.weighting": ["a", "b"],
            "val/click_auc": [0.80, 0.85],
            "val/rating_rmse": [1.00, 0.95],
            "test/click_auc": [0.90, 0.70],
            "test/rating_rmse": [0.90, 1.10],
            "train_seconds": [1.0, 1.0],
        }
    )
    metrics = ["val/click_auc", "val/rating_rmse", "test/click_auc", "test/rating_rmse"]
    summary, front = summarise(runs, ["objectives.weighting"], metrics)
    assert front == ["weighting=b"]
    assert summary["pareto"].to_list() == [False, True]


def test_validation_metrics_of_the_selected_epochs() -> None:
    history = [
        {"epoch": 1, "val/click_auc": 0.70, "val/rating_rmse": 1.2, "val/recall@10": 0.1},
        {"epoch": 2, "val/click_auc": 0.80, "val/rating_rmse": 1.0, "val/recall@10": 0.2},
        {"epoch": 3, "val/click_auc": 0.75, "val/rating_rmse": 0.9, "val/recall@10": 0.3},
    ]
    result = TrainingResult(best_epoch=2, best_score=0.8, history=history)
    assert selected_validation(result) == {
        "val/click_auc": 0.80,
        "val/rating_rmse": 1.0,
        "val/recall@10": 0.2,
    }
    # per-task selection: rating was kept from epoch 3, the rest from epoch 2
    result.task_epochs = {"click": 2, "rating": 3}
    assert selected_validation(result)["val/rating_rmse"] == 0.9
    assert selected_validation(result)["val/click_auc"] == 0.80


@pytest.mark.heavy
@pytest.mark.slow
def test_sweep_command_runs_nested_runs_and_writes_the_front(tmp_path: Path) -> None:
    pipeline = tmp_path / "smoke.toml"
    pipeline.write_text(SMOKE.read_text())
    output = tmp_path / "out"
    common = ["--set", f"pipeline.output_dir={output}", "--set", "training.epochs=2"]
    # a bad combination stops the sweep before anything runs
    code, _, err = cli("sweep", pipeline, *common, "--grid", "objectives.weighting=static,nonsense")
    assert code == 2 and "nonsense" in err and "sweep combination" in err
    assert not (output / "sweep").exists()

    code, out, err = cli(
        "sweep",
        pipeline,
        *common,
        "--grid",
        "objectives.weighting=static,famo",
        "--grid",
        "pipeline.seed=7,8",
    )
    assert code == 0, err
    folder = output / "sweep"
    runs = pl.read_csv(folder / "runs.csv")
    summary = pl.read_csv(folder / "summary.csv")
    assert runs.height == 4 and summary.height == 2
    assert summary["runs"].to_list() == [2, 2]
    static = runs.filter(pl.col("objectives.weighting") == "static")
    assert summary.filter(pl.col("objectives.weighting") == "static")[
        "test/click_auc"
    ].item() == pytest.approx(static["test/click_auc"].mean())
    assert summary["pareto"].any()
    assert (folder / "pareto.png").stat().st_size > 0
    assert "Not dominated on validation:" in out and "| setting |" in out
    # the front is taken on validation: each run's val/click_auc is its selected epoch's
    for run in runs.iter_rows(named=True):
        history = json.loads(
            (folder / f"run-{run['run']:03d}" / "training" / "history.json").read_text()
        )
        chosen = next(r for r in history["history"] if r["epoch"] == history["best_epoch"])
        assert run["val/click_auc"] == pytest.approx(chosen["val/click_auc"])
    val = [c for c in summary.columns if c.startswith("val/") and c.endswith(("_auc", "_rmse"))]
    assert (
        val
        and summary["pareto"].to_list()
        == pareto_front(
            summary.select(val).to_numpy(), [not c.endswith("_rmse") for c in val]
        ).tolist()
    )

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("recsys-mtl-smoke")
    found = mlflow.search_runs([experiment.experiment_id], output_format="list")
    parents = [r for r in found if r.data.tags.get("stage") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert all("test/click_auc" in r.data.metrics for r in children)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/summary.md", "sweep/pareto.png", "sweep/runs.csv"} <= artifacts
