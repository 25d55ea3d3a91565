"""The `recsys-mtl` command line end to end on the smoke pipeline.

The pipeline is trained once for the module (in a temporary folder, tracked in a
throw-away SQLite MLflow store); every test reuses that run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from cli_runner import cli, run_smoke
from polars.testing import assert_frame_equal

import mlflow
from recsys_mtl.data.impressions import read_table
from recsys_mtl.recommender import Recommender

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "smoke.toml"
EPOCHS = 3  # training.epochs in smoke.toml; patience 3 cannot stop it earlier


@dataclass
class Smoke:
    root: Path
    pipeline: Path
    output: Path
    tracking_uri: str
    stdout: str
    code: int
    run_id: str
    model_uri: str

    @property
    def bundle(self) -> Path:
        return self.output / "model"

    @property
    def features(self) -> Path:
        return self.output / "features"

    def report(self) -> dict[str, float]:
        return json.loads((self.output / "reports" / "metrics.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smoke]:
    root = tmp_path_factory.mktemp("cli")
    tracking_uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mp.chdir(root)  # anything written relative to the working directory stays here
        pipeline, output, run_id, model_uri, stdout = run_smoke(
            root, SMOKE, "tracking.system_metrics_interval=0.5"
        )
        mlflow.set_tracking_uri(tracking_uri)
        yield Smoke(
            root,
            pipeline,
            output,
            tracking_uri,
            stdout,
            0,  # run_smoke asserts the exit code
            run_id,
            model_uri,
        )


@pytest.fixture(scope="module")
def recommender(smoke: Smoke) -> Recommender:
    return Recommender.load(smoke.bundle)


@pytest.fixture(scope="module")
def seen(smoke: Smoke) -> pl.DataFrame:
    """(user_id, item_id) clicked in train + validation: what retrieval must exclude."""
    frames = [read_table(smoke.features / s) for s in ("train", "validation")]
    return (
        pl.concat(frames, how="diagonal_relaxed")
        .filter(pl.col("click") == 1)
        .select("user_id", "item_id")
        .unique()
    )


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------- run


def test_run_prints_metrics_table_and_run_id(smoke: Smoke) -> None:
    assert smoke.code == 0
    lines = smoke.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == [
        "metric",
        "system",
        "value",
        "95%",
        "CI",
        "model",
        "-",
        "system",
        "paired",
        "95%",
        "CI",
    ]
    row = next(line for line in lines if line.startswith("click_auc "))
    assert row.split()[1] == "model"
    printed = float(row.split()[2])
    assert printed == pytest.approx(smoke.report()["test/click_auc"], abs=1e-4)
    low, high = (float(x) for x in row.split("[")[1].rstrip("]").split(","))
    assert low < printed < high
    systems = {word for line in lines if line.count("[") == 2 for word in line.split()[:2]}
    assert {"oracle", "popularity"} <= systems  # baselines carry paired intervals
    assert f"MLflow run id: {smoke.run_id}" in smoke.stdout
    assert smoke.model_uri.startswith("models:/")
    assert _files(smoke.bundle) >= {"manifest.json", "model.pt", "index.faiss", "seen.npz"}


def test_run_is_tracked_in_mlflow(smoke: Smoke) -> None:
    run = mlflow.get_run(smoke.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["pipeline.name"] == "smoke"
    assert params["training.epochs"] == str(EPOCHS)
    assert params["pipeline.output_dir"] == str(smoke.output)

    history = mlflow.MlflowClient().get_metric_history(smoke.run_id, "val/click_auc")
    last = torch.load(smoke.output / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == EPOCHS
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
    assert all(0.0 <= m.value <= 1.0 for m in history)
    client = mlflow.MlflowClient()
    for key in ("train/samples_per_second", "train/epoch_seconds"):
        logged = client.get_metric_history(smoke.run_id, key)
        assert sorted(m.step for m in logged) == list(range(1, EPOCHS + 1))
        assert all(m.value > 0 for m in logged)
    train_rows = read_table(smoke.features / "train").height
    for m in client.get_metric_history(smoke.run_id, "train/samples_per_second"):
        seconds = next(
            e.value
            for e in client.get_metric_history(smoke.run_id, "train/epoch_seconds")
            if e.step == m.step
        )
        assert m.value * seconds == pytest.approx(train_rows, rel=1e-6)  # every row, once
    # MLflow's system metrics, sampled while the run was open
    assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0

    report = smoke.report()
    for key in ("test/click_auc", "test/purchase_auc", "test/rating_rmse", "test/recall@10"):
        logged = run.data.metrics[key.replace("@", "_at_")]
        assert logged == pytest.approx(report[key], abs=1e-9)

    info = mlflow.models.get_model_info(smoke.model_uri)
    assert "python_function" in info.flavors
    assert info.run_id == smoke.run_id
    by_run = mlflow.models.get_model_info(f"runs:/{smoke.run_id}/recommender")
    assert by_run.model_uuid == info.model_uuid


def test_stage_commands_in_order_produce_the_same_files(smoke: Smoke, tmp_path: Path) -> None:
    output = tmp_path / "staged"
    overrides = ["--set", f"pipeline.output_dir={output}"]
    printed = {}
    for stage in ("features", "train", "index", "evaluate"):
        code, stdout, stderr = cli(stage, smoke.pipeline, *overrides)
        assert code == 0, f"{stage}: {stderr}"
        printed[stage] = stdout
    assert f"best epoch {EPOCHS}" in printed["train"]
    assert "Index Flat over 80 items: recall@80 1.000" in printed["index"]
    assert "click_auc" in printed["evaluate"]

    assert _files(output) == _files(smoke.output)
    # Same seed, same data: the staged model is the run's model, file for file.
    staged = json.loads((output / "model" / "manifest.json").read_text())["files"]
    assert staged == json.loads((smoke.bundle / "manifest.json").read_text())["files"]
    for split in ("train", "validation", "test"):
        assert_frame_equal(
            read_table(output / "features" / split),
            read_table(smoke.features / split),
        )
    metrics = json.loads((output / "reports" / "metrics.json").read_text())["metrics"]
    assert metrics == smoke.report()  # determinism: the very same numbers
    users = read_table(smoke.features / "test")["user_id"].unique().sort()
    assert_frame_equal(
        Recommender.load(output / "model").recommend(users, k=10),
        Recommender.load(smoke.bundle).recommend(users, k=10),
    )


def test_report_renders_again_from_the_finished_mlflow_run(smoke: Smoke, tmp_path: Path) -> None:
    """The run logged its evaluation; `report RUN_ID` rebuilds the same report from it."""
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(smoke.run_id, "reports")} | {
        f.path for f in mlflow.MlflowClient().list_artifacts(smoke.run_id, "reports/plots")
    }
    assert {"reports/report.md", "reports/evaluation.json", "reports/plots/calibration.png"} <= (
        artifacts
    )
    out = tmp_path / "rendered"
    code, stdout, stderr = cli("report", smoke.run_id, "--out", out)
    assert code == 0, stderr
    local = smoke.output / "reports"
    assert _files(out) == _files(local) - {"metrics.json"}
    assert (out / "report.md").read_text() == (local / "report.md").read_text()
    assert "click_auc" in stdout and "popularity" in stdout

    code, _, stderr = cli("report", "0123456789abcdef", "--out", tmp_path / "none")
    assert code == 2 and "reports/evaluation.json" in stderr
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------- predict


def test_predict_scores_every_row_in_order_with_each_model_form(
    smoke: Smoke, recommender: Recommender, tmp_path: Path
) -> None:
    test = read_table(smoke.features / "test")
    pairs = pl.concat(
        [
            test.select("user_id", "item_id").head(60).reverse(),
            pl.DataFrame({"user_id": [987654, 90], "item_id": [13, 987654]}),  # cold user, item
        ]
    )
    source = tmp_path / "X.parquet"
    pairs.write_parquet(source)

    results = []
    for model in (smoke.bundle, f"runs:/{smoke.run_id}/recommender", smoke.model_uri):
        out = tmp_path / f"P{len(results)}.parquet"
        code, stdout, stderr = cli("predict", "--model", model, "--input", source, "--out", out)
        assert code == 0, stderr
        assert f"{pairs.height} predictions written" in stdout
        results.append(pl.read_parquet(out))

    first = results[0]
    assert first.columns == [
        "user_id",
        "item_id",
        "user_known",
        "item_known",
        "p_click",
        "p_purchase",
        "p_purchase_given_click",
        "rating_pred",
    ]
    assert_frame_equal(first.select("user_id", "item_id"), pairs)
    for column in ("p_click", "p_purchase"):
        assert first[column].is_between(0.0, 1.0).all()
    assert (first["p_purchase"] <= first["p_click"] + 1e-7).all()
    assert first["rating_pred"].is_finite().all()
    for other in results[1:]:
        assert_frame_equal(other, first)
    assert_frame_equal(
        first.drop("user_id", "item_id", "user_known", "item_known"), recommender.predict(pairs)
    )
    assert first["user_known"].to_list() == [True] * 60 + [False, True]
    assert first["item_known"].to_list() == [True] * 61 + [False]


# ---------------------------------------------------------------------------- recommend


def _users_with_seen_in_top5(recommender: Recommender, seen: pl.DataFrame) -> list[int]:
    """Two known users whose unfiltered top 5 includes an item they already clicked, so
    that excluding seen items visibly changes their list."""
    candidates = seen["user_id"].unique().sort().to_list()
    unfiltered = recommender.recommend(candidates, k=5, exclude_seen=False)
    hits = unfiltered.join(seen, on=["user_id", "item_id"], how="semi")
    users = hits["user_id"].unique().sort().to_list()
    assert len(users) >= 2, "the smoke model should rank some seen items highly"
    return users[:2]


def test_recommend_excludes_seen_items_for_each_way_of_naming_users(
    smoke: Smoke, recommender: Recommender, seen: pl.DataFrame, tmp_path: Path
) -> None:
    a, b = _users_with_seen_in_top5(recommender, seen)

    code, stdout, stderr = cli("recommend", "--model", smoke.bundle, "--user", a, b, "-k", 5)
    assert code == 0, stderr
    assert "item_id" in stdout and "p_purchase" in stdout

    (tmp_path / "users.txt").write_text(f"{a}\n{b}\n")
    pl.DataFrame({"user_id": [a, b]}).write_parquet(tmp_path / "users.parquet")
    frames = []
    ways = [["--user", a, b], ["--users", tmp_path / "users.txt"]]
    ways.append(["--users", tmp_path / "users.parquet"])
    for who in ways:
        out = tmp_path / f"recs{len(frames)}.parquet"
        code, stdout, stderr = cli(
            "recommend", "--model", smoke.bundle, *who, "-k", 5, "--out", out
        )
        assert code == 0, stderr
        assert "10 recommendations written" in stdout
        frames.append(pl.read_parquet(out))

    recs = frames[0]
    heads = ["p_click", "p_purchase", "p_purchase_given_click", "rating_pred"]
    assert recs.columns == ["user_id", "rank", "item_id", "score", "source", *heads]
    comparable = [f.with_columns(pl.col("user_id").cast(pl.Int64)) for f in frames]
    for other in comparable[1:]:
        assert_frame_equal(other, comparable[0])
    recs = comparable[0]
    assert recs.group_by("user_id").len().sort("user_id")["len"].to_list() == [5, 5]
    assert recs.filter(pl.col("user_id") == a)["rank"].to_list() == [1, 2, 3, 4, 5]
    assert recs.join(seen, on=["user_id", "item_id"], how="semi").height == 0
    for user in (a, b):
        scores = recs.filter(pl.col("user_id") == user)["score"].to_numpy()
        assert np.all(np.diff(scores) <= 0)
    expected = recommender.recommend([a, b], k=5)
    assert_frame_equal(recs, expected)


def test_recommend_serves_an_unknown_user(smoke: Smoke, tmp_path: Path) -> None:
    out = tmp_path / "recs.parquet"
    code, _, stderr = cli(
        "recommend", "--model", smoke.bundle, "--user", 987654, "-k", 5, "--out", out
    )
    assert code == 0, stderr
    recs = pl.read_parquet(out)
    assert recs.height == 5
    assert recs["item_id"].n_unique() == 5
    assert recs["rank"].to_list() == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_model_on_the_test_split_matches_the_pipeline(
    smoke: Smoke, recommender: Recommender, tmp_path: Path
) -> None:
    """One evaluation path: the pipeline's printed test metrics are what the shipped
    bundle gives on the same rows through `evaluate --model --input`, every model
    metric (pointwise, ranking and segments) within 1e-6, though the bundle now holds
    the test events too (reads are as of each row's time)."""
    out = tmp_path / "report.json"
    test_split = smoke.features / "test"
    code, stdout, stderr = cli(
        "evaluate", "--model", smoke.bundle, "--input", test_split, "--out", out
    )
    assert code == 0, stderr
    assert "click_auc" in stdout
    report = json.loads(out.read_text())["metrics"]
    pipeline = smoke.report()
    model_keys = [
        k
        for k in report
        if (k.startswith("test/") or k.startswith("segment/"))
        and "/popularity/" not in k
        and not k.endswith(("_low", "_high"))
        and k in pipeline
    ]
    assert {"test/click_auc", "test/purchase_auc", "test/rating_rmse", "test/recall@10"} <= set(
        model_keys
    )
    for key in model_keys:
        assert report[key] == pytest.approx(pipeline[key], abs=1e-6), key


# ---------------------------------------------------------------------------- bad input


# name -> (argv template, a phrase the error must contain). The template is split on
# spaces first, then each word is formatted, so paths with spaces stay one argument.
# Every output lands under {out}, which must still not exist afterwards.
BAD_CASES = {
    "missing pipeline": (
        "run {inputs}/nope.toml --set pipeline.output_dir={out}/run",
        "does not exist",
    ),
    "unknown key": ("run {inputs}/typo.toml --set pipeline.output_dir={out}/run", "'epochs'"),
    "bad override": (
        "run {pipeline} --set training.epochs=abc --set pipeline.output_dir={out}/run",
        "training.epochs",
    ),
    "predict missing input": (
        "predict --model {model} --input {inputs}/nope.parquet --out {out}/p.parquet",
        "does not exist",
    ),
    "predict without item_id": (
        "predict --model {model} --input {inputs}/users_only.parquet --out {out}/p.parquet",
        "item_id",
    ),
    "predict to txt": (
        "predict --model {model} --input {inputs}/pairs.parquet --out {out}/p.txt",
        ".parquet",
    ),
    "recommend k=0": ("recommend --model {model} --user 90 -k 0 --out {out}/r.parquet", "-k"),
    "recommend non-numeric user": (
        "recommend --model {model} --user abc -k 5 --out {out}/r.parquet",
        "Int64",
    ),
    "unknown model uri": (
        "predict --model runs:/0123456789abcdef/recommender --input {inputs}/pairs.parquet "
        "--out {out}/p.parquet",
        "0123456789abcdef",
    ),
    "not a bundle": ("recommend --model {inputs} --user 90 --out {out}/r.parquet", "bundle"),
    "evaluate without pipeline or model": (
        "evaluate --input {inputs}/pairs.parquet --out {out}/report.json",
        "--model",
    ),
    # the pipeline TOML
    "toml syntax error": ("run {inputs}/syntax.toml --set pipeline.output_dir={out}/run", "TOML"),
    "wrong type in toml": (
        "run {inputs}/wrong_type.toml --set pipeline.output_dir={out}/run",
        "'training.epochs' must be int",
    ),
    "misspelt section": (
        "run {inputs}/bad_section.toml --set pipeline.output_dir={out}/run",
        "did you mean 'training'?",
    ),
    "batch size zero": (
        "run {pipeline} --set training.batch_size=0 --set pipeline.output_dir={out}/run",
        "training.batch_size",
    ),
    "misspelt choice": (
        "run {pipeline} --set features.split=per_user_temporl --set pipeline.output_dir={out}/run",
        "did you mean 'per_user_temporal'?",
    ),
    "unknown device": (
        "train {pipeline} --device gpu --set pipeline.output_dir={out}/run",
        "unknown training.device 'gpu'",
    ),
    # data files, through the feature pipeline's validation
    "unreadable parquet": (
        "features {pipeline} --set source.kind=impressions "
        "--set source.impressions.path={inputs}/garbage.parquet --set pipeline.output_dir={out}/f",
        "garbage.parquet",
    ),
    "empty impressions": (
        "features {pipeline} --set source.kind=impressions "
        "--set source.impressions.path={inputs}/empty.parquet --set pipeline.output_dir={out}/f",
        "no rows",
    ),
    "missing label column": (
        "features {pipeline} --set source.kind=impressions "
        "--set source.impressions.path={inputs}/missing_click.parquet "
        "--set pipeline.output_dir={out}/f",
        "'click' is missing",
    ),
    "purchase without click": (
        "features {pipeline} --set source.kind=impressions "
        "--set source.impressions.path={inputs}/purchase_no_click.parquet "
        "--set pipeline.output_dir={out}/f",
        "a purchase without a click",
    ),
    "label outside its domain": (
        "features {pipeline} --set source.kind=impressions "
        "--set source.impressions.path={inputs}/click_two.parquet "
        "--set pipeline.output_dir={out}/f",
        "outside {0, 1}",
    ),
    "text timestamps": (
        "features {pipeline} --set source.kind=impressions "
        "--set source.impressions.path={inputs}/text_time.parquet "
        "--set pipeline.output_dir={out}/f",
        "not a date-time",
    ),
    "rating off the scale": (
        "features {pipeline} --set source.kind=impressions "
        "--set source.impressions.path={inputs}/rating_eleven.parquet "
        "--set features.rating_scale=[1,5] --set pipeline.output_dir={out}/f",
        "outside the rating scale",
    ),
    # queries
    "predict unreadable input": (
        "predict --model {model} --input {inputs}/garbage.parquet --out {out}/p.parquet",
        "garbage.parquet",
    ),
    "users file without user_id": (
        "recommend --model {model} --users {inputs}/items_only.parquet --out {out}/r.parquet",
        "user_id",
    ),
    "fusion weight for an unknown task": (
        "recommend --model {model} --user 90 --fusion clicks=1 --out {out}/r.parquet",
        "clicks",
    ),
}
if not torch.cuda.is_available():
    BAD_CASES["cuda without a GPU"] = (
        "run {pipeline} --device cuda --set pipeline.output_dir={out}/run",
        "sees no GPU",
    )


@pytest.fixture(scope="module")
def bad_inputs(smoke: Smoke, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs")
    text = smoke.pipeline.read_text()
    assert "\nepochs = 3\n" in text
    (folder / "typo.toml").write_text(text.replace("\nepochs = 3\n", "\nepoch = 3\n"))
    pl.DataFrame({"user_id": [90, 18]}).write_parquet(folder / "users_only.parquet")
    pl.DataFrame({"user_id": [90, 18], "item_id": [13, 37]}).write_parquet(folder / "pairs.parquet")
    pl.DataFrame({"item_id": [13, 37]}).write_parquet(folder / "items_only.parquet")
    (folder / "syntax.toml").write_text(text.replace("\n[training]\n", "\n[training\n"))
    (folder / "wrong_type.toml").write_text(text.replace("\nepochs = 3\n", '\nepochs = "ten"\n'))
    (folder / "bad_section.toml").write_text(text.replace("\n[training]\n", "\n[trainig]\n"))
    (folder / "garbage.parquet").write_bytes(b"this is not a Parquet file")
    impressions = pl.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "item_id": [10, 11, 10, 12],
            "timestamp": [1, 2, 3, 4],
            "click": [1, 0, 1, 1],
            "purchase": [0, 0, 1, 0],
            "rating": [None, None, 4.0, None],
        }
    )
    impressions.head(0).write_parquet(folder / "empty.parquet")
    impressions.drop("click").write_parquet(folder / "missing_click.parquet")
    impressions.with_columns(purchase=pl.Series([0, 1, 1, 0])).write_parquet(
        folder / "purchase_no_click.parquet"
    )
    impressions.with_columns(click=pl.Series([2, 0, 1, 1])).write_parquet(
        folder / "click_two.parquet"
    )
    impressions.with_columns(timestamp=pl.Series(["1x", "2x", "3x", "4x"])).write_parquet(
        folder / "text_time.parquet"
    )
    impressions.with_columns(rating=pl.Series([None, None, 11.0, None])).write_parquet(
        folder / "rating_eleven.parquet"
    )
    return folder


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_paragraph_and_exit_2(
    case: str, smoke: Smoke, bad_inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    template, phrase = BAD_CASES[case]
    places = {"inputs": bad_inputs, "out": out, "model": smoke.bundle, "pipeline": smoke.pipeline}
    argv = [word.format(**places) for word in template.split()]
    before = _files(bad_inputs)
    code, stdout, stderr = cli(*argv)
    assert code == 2, stderr
    message = stderr.strip()
    assert message.startswith("recsys-mtl: error:"), stderr
    assert "\n" not in message, stderr
    assert "Fix:" in message
    assert phrase in message
    assert "Traceback" not in stderr
    assert stdout == ""
    assert not out.exists(), f"{case} wrote {sorted(_files(out))}"
    assert _files(bad_inputs) == before


def test_console_script_reports_bad_config_without_traceback(
    smoke: Smoke, bad_inputs: Path, tmp_path: Path
) -> None:
    script = Path(sys.executable).with_name("recsys-mtl")
    assert script.is_file()
    output = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": smoke.tracking_uri}
    done = subprocess.run(
        [script, "run", bad_inputs / "typo.toml", "--set", f"pipeline.output_dir={output}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("recsys-mtl: error: unknown setting 'epoch'")
    assert "did you mean 'epochs'?" in done.stderr
    assert not output.exists()


def _hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("setting", "phrase"),
    [
        ("source.impressions.path={inputs}/purchase_no_click.parquet", "without a click"),
        ("training.monitor=val/nope", "val/nope"),  # fails after an epoch of training
    ],
)
def test_a_failed_run_keeps_earlier_outputs_and_is_marked_failed_in_mlflow(
    setting: str, phrase: str, smoke: Smoke, bad_inputs: Path, tmp_path: Path
) -> None:
    import shutil

    output = tmp_path / "earlier"
    shutil.copytree(smoke.output, output)
    before = _hashes(output)
    experiment = f"failing-{len(setting)}"
    sets = [f"pipeline.output_dir={output}", f"tracking.experiment={experiment}"]
    if "source." in setting:
        sets.append("source.kind=impressions")
    sets.append(setting.format(inputs=bad_inputs))
    code, _, stderr = cli("run", smoke.pipeline, *[f"--set={s}" for s in sets])
    assert code == 2 and phrase in stderr and "Traceback" not in stderr
    # the features stage rebuilds the same features byte for byte; nothing else changed
    assert _hashes(output) == before
    client = mlflow.MlflowClient(smoke.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert phrase in runs[0].data.tags["error"]
