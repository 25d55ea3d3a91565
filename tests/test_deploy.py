"""`training.refit = 'all'`: the evaluated model keeps the reported metrics, the shipped
one is retrained on every split, and MLflow holds both, each tagged with its role."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from cli_runner import cli, run_smoke

import mlflow
from recsys_mtl.data.impressions import read_table
from recsys_mtl.evaluation.metrics import auc
from recsys_mtl.recommender import Recommender

pytestmark = pytest.mark.slow

SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "smoke.toml"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("deploy")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        _, output, run_id, model_uri, stdout = run_smoke(root, SMOKE, "training.refit='all'")
        mlflow.set_tracking_uri(uri)
        yield output, run_id, model_uri, stdout


def _test_click_auc(bundle: Path, test: pl.DataFrame) -> float:
    scores = Recommender.load(bundle).predict(test)
    return auc(test["click"].to_numpy(), scores["p_click"].to_numpy())


def test_reported_metrics_are_the_evaluated_bundles(deployed, tmp_path: Path) -> None:
    output, _, _, stdout = deployed
    evaluated = output / "model_evaluated"
    assert (evaluated / "manifest.json").is_file()
    assert (output / "model" / "manifest.json").is_file()
    assert "retrained on every split" in stdout
    out = tmp_path / "report.json"
    code, _, stderr = cli(
        "evaluate", "--model", evaluated, "--input", output / "features" / "test", "--out", out
    )
    assert code == 0, stderr
    again = json.loads(out.read_text())["metrics"]
    printed = json.loads((output / "reports" / "metrics.json").read_text())["metrics"]
    for key in ("test/click_auc", "test/purchase_auc", "test/rating_rmse", "test/recall@10"):
        assert again[key] == pytest.approx(printed[key], abs=1e-6), key


def test_the_shipped_model_was_trained_on_the_test_rows_too(deployed) -> None:
    output, *_ = deployed
    record = json.loads((output / "training" / "deployment.json").read_text())
    spec = json.loads((output / "features" / "spec.json").read_text())
    assert record["splits"] == ["train", "validation", "test"]
    assert record["rows"] == sum(spec["rows"].values())
    assert (
        record["epochs"]
        == json.loads((output / "training" / "history.json").read_text())["best_epoch"]
    )
    test = read_table(output / "features" / "test")
    # rows it was fitted on score better than rows it never saw
    assert _test_click_auc(output / "model", test) > _test_click_auc(
        output / "model_evaluated", test
    )
    # and it knows the same events: equal seen sets
    shipped, evaluated = (Recommender.load(output / f) for f in ("model", "model_evaluated"))
    np.testing.assert_array_equal(shipped.seen_indptr, evaluated.seen_indptr)
    np.testing.assert_array_equal(shipped.seen_items, evaluated.seen_items)


def test_mlflow_holds_both_models_tagged_by_role(deployed) -> None:
    _, run_id, model_uri, stdout = deployed
    shipped = mlflow.models.get_model_info(model_uri)
    evaluated = mlflow.models.get_model_info(f"runs:/{run_id}/recommender_evaluated")
    assert shipped.run_id == evaluated.run_id == run_id
    assert shipped.model_uuid != evaluated.model_uuid
    assert mlflow.get_logged_model(shipped.model_id).tags["role"] == "deployed"
    assert mlflow.get_logged_model(evaluated.model_id).tags["role"] == "evaluated"
    run = mlflow.get_run(run_id)
    assert "deploy/seconds" in run.data.metrics
    assert run.data.tags["deployed_model"].startswith("retrained on train + validation + test")
    assert "MLflow evaluated model:" in stdout
