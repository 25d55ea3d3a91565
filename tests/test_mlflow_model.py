"""The recommender logged by `recsys-mtl run` as an MLflow pyfunc model.

The smoke pipeline is trained once for the module (temporary folder, throw-away
SQLite MLflow store); the logged model is loaded once with mlflow.pyfunc.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from cli_runner import cli, run_smoke
from mlflow.entities import ViewType
from mlflow.types import DataType

import mlflow
from recsys_mtl.data.impressions import read_table
from recsys_mtl.recommender import Recommender

pytestmark = pytest.mark.slow

SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "smoke.toml"
UNKNOWN_USER = 987654


@dataclass
class Logged:
    root: Path
    pipeline: Path
    output: Path
    run_id: str
    model_uri: str


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    root = tmp_path_factory.mktemp("pyfunc")
    tracking_uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mp.chdir(root)
        pipeline, output, run_id, model_uri, _ = run_smoke(root, SMOKE)
        mlflow.set_tracking_uri(tracking_uri)
        yield Logged(root, pipeline, output, run_id, model_uri)


@pytest.fixture(scope="module")
def pyfunc(logged: Logged) -> Any:
    return mlflow.pyfunc.load_model(logged.model_uri)


@pytest.fixture(scope="module")
def recommender(logged: Logged) -> Recommender:
    return Recommender.load(logged.output / "model")


@pytest.fixture(scope="module")
def users(logged: Logged) -> list[int]:
    """Three users of the test split and one the model has never seen."""
    test = read_table(logged.output / "features" / "test")
    return [*test["user_id"].unique(maintain_order=True).head(3).to_list(), UNKNOWN_USER]


def test_pyfunc_answers_retrieval_queries_like_the_recommender_and_cli(
    logged: Logged, pyfunc: Any, recommender: Recommender, users: list[int], tmp_path: Path
) -> None:
    request = pd.DataFrame({"user_id": users})

    top10 = pyfunc.predict(request)
    assert isinstance(top10, pd.DataFrame)
    assert top10.groupby("user_id").size().to_dict() == dict.fromkeys(users, 10)
    expected = recommender.recommend(pl.Series("user_id", users), k=10).to_pandas()
    pd.testing.assert_frame_equal(top10.reset_index(drop=True), expected)

    top3 = pyfunc.predict(request, params={"k": 3})
    assert top3.groupby("user_id").size().to_dict() == dict.fromkeys(users, 3)
    assert top3["rank"].tolist() == [1, 2, 3] * len(users)
    # The first three of the top 10 are the top 3.
    first3 = top10[top10["rank"] <= 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(top3.reset_index(drop=True), first3)

    pl.DataFrame({"user_id": users}).write_parquet(tmp_path / "users.parquet")
    out = tmp_path / "recs.parquet"
    users_file = tmp_path / "users.parquet"
    code, _, stderr = cli(
        "recommend", "--model", logged.model_uri, "--users", users_file, "-k", 3, "--out", out
    )
    assert code == 0, stderr
    pd.testing.assert_frame_equal(top3.reset_index(drop=True), pl.read_parquet(out).to_pandas())


def test_pyfunc_scores_user_item_pairs_like_recommender_predict(
    logged: Logged, pyfunc: Any, recommender: Recommender
) -> None:
    test = read_table(logged.output / "features" / "test")
    pairs = pl.concat(
        [
            test.select("user_id", "item_id").head(40),
            pl.DataFrame({"user_id": [UNKNOWN_USER], "item_id": [13]}),
        ]
    )
    scored = pyfunc.predict(pairs.to_pandas())
    assert list(scored.columns) == [
        "user_id",
        "item_id",
        "p_click",
        "p_purchase",
        "p_purchase_given_click",
        "rating_pred",
    ]
    assert scored["user_id"].tolist() == pairs["user_id"].to_list()
    assert scored["item_id"].tolist() == pairs["item_id"].to_list()
    expected = recommender.predict(pairs).to_pandas()
    pd.testing.assert_frame_equal(scored.drop(columns=["user_id", "item_id"]), expected)
    assert ((scored["p_click"] >= 0) & (scored["p_click"] <= 1)).all()
    assert (scored["p_purchase"] <= scored["p_click"] + 1e-7).all()


def test_signature_takes_user_id_and_a_k_param(pyfunc: Any) -> None:
    inputs = {spec.name: spec for spec in pyfunc.metadata.get_input_schema().inputs}
    assert set(inputs) == {"user_id", "item_id"}
    assert inputs["user_id"].required
    assert not inputs["item_id"].required
    assert inputs["user_id"].type == DataType.long  # the smoke vocabulary holds Int64 ids
    params = {spec.name: spec for spec in pyfunc.metadata.get_params_schema().params}
    assert set(params) == {"k"}
    assert params["k"].default == 10
    assert params["k"].dtype == DataType.long
    assert "python_function" in pyfunc.metadata.flavors


def test_pipeline_failure_marks_the_mlflow_run_failed(logged: Logged, tmp_path: Path) -> None:
    experiment = "recsys-mtl-smoke-failing"
    overrides = [
        f"pipeline.output_dir={tmp_path / 'failing'}",
        "training.monitor=val/no_such_metric",
        "training.epochs=1",
        f"tracking.experiment={experiment}",
    ]
    code, stdout, stderr = cli("run", logged.pipeline, *(f"--set={o}" for o in overrides))
    assert code == 2
    message = stderr.strip()
    assert message.startswith("recsys-mtl: error:")
    assert "val/no_such_metric" in message and "Fix:" in message
    assert "Traceback" not in stderr
    assert "MLflow run id" not in stdout

    runs = mlflow.search_runs(
        experiment_names=[experiment], run_view_type=ViewType.ALL, output_format="list"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert "val/no_such_metric" in run.data.tags["error"]
    assert run.data.params["training.monitor"] == "val/no_such_metric"
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert models == []
    assert not (tmp_path / "failing" / "model").exists()
