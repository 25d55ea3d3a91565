"""The recommender logged by `recsys-mtl run` as an MLflow pyfunc model.

The smoke pipeline is trained once for the module (temporary folder, throw-away
SQLite MLflow store); the logged model is loaded once with mlflow.pyfunc.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
import requests
from cli_runner import cli, run_smoke
from mlflow.entities import ViewType
from mlflow.types import DataType

import mlflow
from recsys_mtl.data.impressions import read_table
from recsys_mtl.model_server import local_model_server
from recsys_mtl.recommender import Recommender

pytestmark = pytest.mark.slow

SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "smoke.toml"
UNKNOWN_USER = 987654
REGISTERED = "smoke-recommender"


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
        pipeline, output, run_id, model_uri, _ = run_smoke(
            root, SMOKE, f"tracking.registered_model={REGISTERED}"
        )
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
        "user_known",
        "item_known",
        "p_click",
        "p_purchase",
        "p_purchase_given_click",
        "rating_pred",
    ]
    assert scored["user_id"].tolist() == pairs["user_id"].to_list()
    assert scored["item_id"].tolist() == pairs["item_id"].to_list()
    expected = recommender.predict(pairs).to_pandas()
    pd.testing.assert_frame_equal(
        scored.drop(columns=["user_id", "item_id", "user_known", "item_known"]), expected
    )
    assert scored["user_known"].tolist() == [True] * 40 + [False]
    assert ((scored["p_click"] >= 0) & (scored["p_click"] <= 1)).all()
    assert (scored["p_purchase"] <= scored["p_click"] + 1e-7).all()


def test_signature_has_the_request_columns_and_params(pyfunc: Any) -> None:
    inputs = {spec.name: spec for spec in pyfunc.metadata.get_input_schema().inputs}
    events = {"events_item_id", "events_timestamp", "events_click", "events_purchase"}
    assert set(inputs) == {
        "user_id",
        "item_id",
        "timestamp",
        "exclude_items",
        "segment",
        *events,
        "events_rating",
    }
    assert inputs["user_id"].required
    assert not any(inputs[name].required for name in inputs if name != "user_id")
    assert inputs["user_id"].type == DataType.long  # the smoke vocabulary holds Int64 ids
    assert inputs["segment"].type == DataType.string  # a user side-table feature
    params = {spec.name: spec for spec in pyfunc.metadata.get_params_schema().params}
    assert set(params) == {
        "k",
        "fusion_mode",
        "exclude_seen",
        "exclude_items",
        "weight_click",
        "weight_purchase",
        "weight_rating",
    }
    assert (params["k"].default, params["k"].dtype) == (10, DataType.long)
    assert params["fusion_mode"].default == "product"
    assert (params["weight_click"].default, params["weight_rating"].default) == (1.0, 0.0)
    assert params["exclude_items"].shape == (-1,)
    outputs = [spec.name for spec in pyfunc.metadata.get_output_schema().inputs]
    assert outputs == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "source",
        "p_click",
        "p_purchase",
        "p_purchase_given_click",
        "rating_pred",
    ]
    assert "python_function" in pyfunc.metadata.flavors


def test_params_change_fusion_and_exclusions_like_the_recommender(
    pyfunc: Any, recommender: Recommender, users: list[int]
) -> None:
    request = pd.DataFrame({"user_id": users})
    params = {"k": 4, "weight_purchase": 0.0, "exclude_items": [13], "fusion_mode": "sum"}
    answered = pyfunc.predict(request, params=params)
    expected = recommender.recommend(
        users, k=4, fusion={"purchase": 0.0}, fusion_mode="sum", exclude_items=[13]
    ).to_pandas()
    pd.testing.assert_frame_equal(answered.reset_index(drop=True), expected)
    assert 13 not in answered["item_id"].tolist()


def test_the_model_is_registered(logged: Logged) -> None:
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].run_id == logged.run_id
    registered = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1")
    answer = registered.predict(pd.DataFrame({"user_id": [UNKNOWN_USER]}), params={"k": 2})
    assert answer["source"].tolist() == ["popularity", "popularity"]


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


# ---------------------------------------------------------------------------- REST serving


@pytest.fixture(scope="module")
def served(logged: Logged, isolated_mlflow: str) -> Iterator[str]:
    """`mlflow models serve` on 127.0.0.1 for the logged model; stopped afterwards."""
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{logged.root / 'mlflow' / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
    }
    log = logged.root / "serve.log"
    with local_model_server(logged.model_uri, env=env, log=log, cwd=logged.root) as server:
        yield server.url


def _invoke(url: str, payload: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


def test_rest_answers_equal_the_cli(
    served: str, logged: Logged, users: list[int], tmp_path: Path
) -> None:
    response = _invoke(
        served, {"dataframe_records": [{"user_id": u} for u in users], "params": {"k": 5}}
    )
    assert response.status_code == 200, response.text
    answered = pd.DataFrame(response.json()["predictions"])
    out = tmp_path / "cli.parquet"
    user_args = [str(u) for u in users]
    code, _, stderr = cli(
        "recommend", "--model", logged.model_uri, "--user", *user_args, "-k", 5, "--out", out
    )
    assert code == 0, stderr
    expected = pl.read_parquet(out).to_pandas()
    assert answered.groupby("user_id").size().to_dict() == dict.fromkeys(users, 5)
    pd.testing.assert_frame_equal(answered, expected, check_dtype=False, rtol=1e-5)


def test_rest_params_weights_and_exclusions(
    served: str, logged: Logged, users: list[int], tmp_path: Path
) -> None:
    known = users[:2]
    # an optional list column needs a value in every record: [] for none
    records = [
        {"user_id": known[0], "exclude_items": [13, 14]},
        {"user_id": known[1], "exclude_items": []},
    ]
    params = {"k": 3, "weight_click": 0.0, "weight_purchase": 1.0, "exclude_items": [15]}
    response = _invoke(served, {"dataframe_records": records, "params": params})
    assert response.status_code == 200, response.text
    answered = pd.DataFrame(response.json()["predictions"])
    first = answered[answered["user_id"] == known[0]]["item_id"].tolist()
    assert not {13, 14, 15} & set(first)
    assert 15 not in answered["item_id"].tolist()
    requests_file = tmp_path / "requests.parquet"
    pl.DataFrame(
        records, schema={"user_id": pl.Int64, "exclude_items": pl.List(pl.Int64)}
    ).write_parquet(requests_file)
    out = tmp_path / "cli.parquet"
    code, _, stderr = cli(
        "recommend",
        "--model",
        logged.model_uri,
        "--users",
        requests_file,
        "-k",
        3,
        "--fusion",
        "click=0",
        "--fusion",
        "purchase=1",
        "--exclude",
        "15",
        "--out",
        out,
    )
    assert code == 0, stderr
    expected = pl.read_parquet(out).to_pandas()
    pd.testing.assert_frame_equal(answered, expected, check_dtype=False, rtol=1e-5)


def test_rest_request_carrying_the_users_latest_events(
    served: str, recommender: Recommender, users: list[int]
) -> None:
    """A request's events_* columns count for that request: the items they clicked are
    excluded and the answer is the in-process one with the same events; the served
    model itself does not keep them."""
    from recsys_mtl.serving import answer

    user = users[0]
    plain = _invoke(served, {"dataframe_records": [{"user_id": user}], "params": {"k": 5}})
    assert plain.status_code == 200, plain.text
    clicked = [row["item_id"] for row in plain.json()["predictions"][:2]]
    record = {
        "user_id": user,
        "events_item_id": clicked,
        "events_timestamp": [2_000_000_000, 2_000_000_060],
        "events_rating": [5.0, None],
    }
    response = _invoke(served, {"dataframe_records": [record], "params": {"k": 5}})
    assert response.status_code == 200, response.text
    answered = pd.DataFrame(response.json()["predictions"])
    assert not set(clicked) & set(answered["item_id"])
    expected = answer(recommender, pd.DataFrame([record]), {"k": 5})
    pd.testing.assert_frame_equal(answered, expected, check_dtype=False, rtol=1e-5)
    again = _invoke(served, {"dataframe_records": [{"user_id": user}], "params": {"k": 5}})
    assert again.json() == plain.json()


# name -> (request body, sent as JSON or as raw bytes, a phrase of the answer's message)
MALFORMED_REQUESTS: dict[str, tuple[Any, bool, str]] = {
    "k = 0": ({"dataframe_records": [{"user_id": 1}], "params": {"k": 0}}, True, "k must be"),
    "k < 0": ({"dataframe_records": [{"user_id": 1}], "params": {"k": -3}}, True, "k must be"),
    "k not a number": (
        {"dataframe_records": [{"user_id": 1}], "params": {"k": "ten"}},
        True,
        "k",
    ),
    "unknown fusion mode": (
        {"dataframe_records": [{"user_id": 1}], "params": {"fusion_mode": "max"}},
        True,
        "fusion mode",
    ),
    "text user id": ({"dataframe_records": [{"user_id": "not-a-number"}]}, True, "user_id"),
    "not JSON": (b'{"dataframe_records": [{"user_id": 1}', False, ""),
    "no dataframe_records": ({"rows": [{"user_id": 1}]}, True, ""),
    "no user_id column": ({"dataframe_records": [{"customer": 1}]}, True, "user_id"),
    "records not a list": ({"dataframe_records": {"user_id": 1}}, True, ""),
    "a JSON list": ([{"user_id": 1}], True, ""),
}


@pytest.mark.parametrize("name", list(MALFORMED_REQUESTS))
def test_rest_malformed_requests_get_4xx_with_a_message_and_the_server_stays_up(
    served: str, name: str
) -> None:
    body, is_json, phrase = MALFORMED_REQUESTS[name]
    send: dict[str, Any] = {"json": body} if is_json else {"data": body}
    response = requests.post(
        f"{served}/invocations",
        headers={"Content-Type": "application/json"},
        timeout=60,
        **send,
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    message = response.json()["message"]
    assert phrase in message
    assert "Traceback" not in message
    assert requests.get(f"{served}/ping", timeout=5).status_code == 200
    ok = _invoke(served, {"dataframe_records": [{"user_id": UNKNOWN_USER}], "params": {"k": 2}})
    assert ok.status_code == 200
    assert [r["source"] for r in ok.json()["predictions"]] == ["popularity"] * 2


def test_concurrent_clients_get_the_sequential_answers(served: str, users: list[int]) -> None:
    """8 clients at once, good and malformed requests mixed: each good request gets the
    answer it gets alone, each malformed one a 400, and the server stays up."""
    asked = [*users[:6], UNKNOWN_USER]
    alone = {u: _invoke(served, {"dataframe_records": [{"user_id": u}]}).json() for u in asked}
    bad = {"dataframe_records": [{"user_id": 1}], "params": {"k": 0}}

    def client(offset: int) -> list[tuple[Any, int, Any]]:
        session = requests.Session()
        answers = []
        for i in range(12):
            user = asked[(offset + i) % len(asked)]
            payload = bad if i % 4 == 3 else {"dataframe_records": [{"user_id": user}]}
            response = session.post(f"{served}/invocations", json=payload, timeout=60)
            answers.append(
                (None if payload is bad else user, response.status_code, response.json())
            )
        return answers

    with ThreadPoolExecutor(8) as pool:
        results = [a for answers in pool.map(client, range(8)) for a in answers]
    assert len(results) == 96
    for user, status, body in results:
        if user is None:
            assert status == 400 and "k must be" in body["message"]
        else:
            assert status == 200 and body == alone[user]
    assert requests.get(f"{served}/ping", timeout=5).status_code == 200


def test_the_logged_model_is_code_not_a_pickle(logged: Logged) -> None:
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    assert not list(local.rglob("*.pkl")), "the pyfunc model must not be pickled"
    assert (local / "serving_entry.py").is_file() or list(local.rglob("serving_entry.py"))
