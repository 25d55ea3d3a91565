"""Offline evaluation: systems compared on one test set with paired bootstrap intervals,
segments, baselines, the protocol guards, per-task selection of the single-task
baselines, the report, and repetition over seeds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from planted import one_torch_thread

from recsys_mtl.config import TaskConfig, load_config
from recsys_mtl.errors import RecsysError
from recsys_mtl.evaluation.metrics import auc, per_user_ranking, rmse
from recsys_mtl.evaluation.offline import EvaluationData, System, evaluate_systems, flat_metrics
from recsys_mtl.evaluation.report import comparison_rows, headline_metrics, write_report
from recsys_mtl.evaluation.seeds import evaluate_seeds
from recsys_mtl.evaluation.systems import rating_mean_systems
from recsys_mtl.pipeline import (
    Paths,
    _fit,
    evaluate_stage,
    features_stage,
    single_task_config,
    task_monitor,
    train_stage,
)
from recsys_mtl.training.tensors import TensorData, predict_arrays

SMOKE = Path(__file__).resolve().parent.parent / "pipelines" / "smoke.toml"
TASKS = {
    "click": TaskConfig(kind="binary", label="click", head="dot"),
    "purchase": TaskConfig(kind="binary", label="purchase", depends_on="click"),
    "rating": TaskConfig(kind="regression", label="rating"),
}


def _evaluation_data(n_users: int = 400, rows_per_user: int = 10, seed: int = 0) -> EvaluationData:
    """Users 0..n-1 with `rows_per_user` rows; user u has u // 40 + 1 earlier events;
    ranking users are the even users, each with one relevant item (its own index % 50)."""
    rng = np.random.default_rng(seed)
    n = n_users * rows_per_user
    click = rng.integers(0, 2, n).astype(float)
    purchase = np.where(click == 1, rng.integers(0, 2, n), 0).astype(float)
    rating = np.where(click == 1, rng.integers(1, 6, n), np.nan).astype(float)
    ranking_user = np.arange(0, n_users, 2)
    return EvaluationData(
        row_user=np.repeat(np.arange(n_users), rows_per_user),
        labels={"click": click, "purchase": purchase, "rating": rating},
        ranking_user=ranking_user,
        relevant_indptr=np.arange(len(ranking_user) + 1),
        relevant_items=ranking_user % 50,
        user_events=np.arange(n_users) // 40 + 1,
        item_popularity=np.arange(50, dtype=float),
        n_catalogue=50,
    )


def _system(name: str, test: EvaluationData, noise: float, seed: int) -> System:
    """Scores = labels + noise; ranks each ranking user's relevant item at a position
    that grows with the noise."""
    rng = np.random.default_rng(seed)
    click = test.labels["click"]
    p_click = np.clip(0.5 * click + 0.25 + noise * rng.normal(size=click.size), 0.01, 0.99)
    p_buy = np.clip(
        0.5 * test.labels["purchase"] + 0.2 + noise * rng.normal(size=click.size), 0.01, 0.99
    )
    rating = np.nan_to_num(test.labels["rating"], nan=3.0) + noise * 4 * rng.normal(size=click.size)
    relevant = test.relevant_items
    top = (relevant[:, None] + 1 + np.arange(20)[None, :]) % 50  # never the relevant item
    hit = rng.random(len(relevant)) > noise * 2  # the better the system, the more hits
    top[hit, rng.integers(0, 5, hit.sum())] = relevant[hit]
    return System(
        name,
        name,
        {
            "p_click": p_click,
            "p_purchase": p_click * p_buy,
            "p_purchase_given_click": p_buy,
            "rating_pred": rating,
        },
        top_items=top,
    )


def test_point_metrics_equal_the_metric_functions_and_copies_differ_by_exactly_zero() -> None:
    test = _evaluation_data()
    model = _system("model", test, 0.2, 1)
    copy = System("copy", "same", dict(model.predictions), top_items=model.top_items.copy())
    worse = _system("worse", test, 0.35, 2)
    report = evaluate_systems(test, [model, copy, worse], TASKS, [5, 20], resamples=100, seed=3)

    metrics = report["systems"]["model"]["metrics"]
    assert metrics["click_auc"] == pytest.approx(
        auc(test.labels["click"], model.predictions["p_click"])
    )
    rated = ~np.isnan(test.labels["rating"])
    assert metrics["rating_rmse"] == pytest.approx(
        rmse(test.labels["rating"][rated], model.predictions["rating_pred"][rated])
    )
    clicked = test.labels["click"] == 1
    assert metrics["purchase_auc_given_click"] == pytest.approx(
        auc(test.labels["purchase"][clicked], model.predictions["p_purchase_given_click"][clicked])
    )
    per_user = per_user_ranking(model.top_items, test.relevant_indptr, test.relevant_items, [5])
    assert metrics["recall@5"] == pytest.approx(np.nanmean(per_user["recall@5"]))
    assert metrics["coverage@5"] == pytest.approx(len(np.unique(model.top_items[:, :5])) / 50)

    # A copy of the model differs by exactly zero in every replicate: a (0, 0) interval.
    for key, entry in report["differences"]["copy"].items():
        assert entry["difference"] == 0.0, key
        if "low" in entry:
            assert entry["low"] == entry["high"] == 0.0, key
    # A worse system: the paired interval excludes 0 on the clear differences and is
    # narrower than the two systems' own intervals side by side.
    worse_gap = report["differences"]["worse"]
    intervals = report["systems"]
    for key in ("click_auc", "purchase_auc", "rating_rmse", "recall@20"):
        low, high = worse_gap[key]["low"], worse_gap[key]["high"]
        assert low * high > 0, (key, low, high)
        own = [intervals[n]["intervals"][key] for n in ("model", "worse")]
        assert high - low < (own[0][1] - own[0][0]) + (own[1][1] - own[1][0])
    # Every interval contains its point estimate.
    for name, entry in report["systems"].items():
        for key, (low, high) in entry["intervals"].items():
            assert low <= entry["metrics"][key] <= high, (name, key)


def test_segments_score_only_their_users() -> None:
    test = _evaluation_data()
    model = _system("model", test, 0.2, 1)
    report = evaluate_systems(test, [model], TASKS, [5], resamples=0, cold_max_events=3)
    cold_users = test.user_events <= 3  # users 0..119
    assert report["segments"]["cold"]["users"] == 120
    rows = cold_users[test.row_user]
    cold = report["segments"]["cold"]["systems"]["model"]
    assert cold["click_auc"] == pytest.approx(
        auc(test.labels["click"][rows], model.predictions["p_click"][rows])
    )
    ranked = cold_users[test.ranking_user]
    per_user = per_user_ranking(model.top_items, test.relevant_indptr, test.relevant_items, [5])
    assert cold["recall@5"] == pytest.approx(np.nanmean(per_user["recall@5"][ranked]))
    active = report["segments"]["active"]["systems"]["model"]
    assert active["click_auc"] == pytest.approx(
        auc(test.labels["click"][~rows], model.predictions["p_click"][~rows])
    )
    assert "intervals" not in report["systems"]["model"]  # resamples=0: no bootstrap


def test_rating_mean_baselines_by_hand() -> None:
    history = pl.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "c"],
            "item_id": ["x", "y", "x", "z", "z"],
            "rating": [4.0, 2.0, 5.0, None, 1.0],
        }
    )
    test = pl.DataFrame({"user_id": ["a", "b", "new"], "item_id": ["z", "y", "x"]})
    systems = {
        s.name: s.predictions["rating_pred"] for s in rating_mean_systems(history, test, TASKS)
    }
    overall = (4 + 2 + 5 + 1) / 4
    np.testing.assert_allclose(systems["global_mean"], [overall] * 3)
    np.testing.assert_allclose(systems["user_mean"], [3.0, 5.0, overall])  # new user: global
    np.testing.assert_allclose(systems["item_mean"], [1.0, 2.0, 4.5])


def test_report_table_puts_the_model_first_and_renders_markdown(tmp_path: Path) -> None:
    test = _evaluation_data()
    systems = [_system("model", test, 0.2, 1), _system("worse", test, 0.35, 2)]
    report = evaluate_systems(test, systems, TASKS, [5, 20], resamples=50, curve_ks=[1, 5, 20])
    rows = comparison_rows(report)
    assert rows[0][:3] == ["metric", "system", "value"]
    assert headline_metrics(report)[:4] == [
        "click_auc",
        "purchase_auc",
        "purchase_auc_given_click",
        "rating_rmse",
    ]
    click = [r for r in rows[1:3]]
    assert [r[1] for r in click] == ["model", "worse"]
    assert click[0][4] == "" and click[1][4].startswith("+")  # model - worse > 0 on AUC
    path = write_report(report, None, tmp_path, "unit")
    text = path.read_text()
    assert "| click_auc | model |" in text and "## Segments" in text
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["ranking_curves"]["model"]["k"] == [1, 5, 20]
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "calibration.png",
        "ranking_vs_k.png",
        "baselines.png",
    }
    flat = flat_metrics(report)
    assert flat["test/click_auc_low"] < flat["test/click_auc"] < flat["test/click_auc_high"]
    assert flat["diff/worse/click_auc"] > 0


# ---------------------------------------------------------------------------- pipeline


def _smoke(tmp_path: Path, *overrides: str):
    return load_config(
        SMOKE,
        [
            f"pipeline.output_dir='{tmp_path / 'smoke'}'",
            "tracking.enabled=false",
            "training.threads=1",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("evaluation")
    config = _smoke(tmp_path)
    with one_torch_thread():
        features = features_stage(config)
        recommender, _ = train_stage(config, features)
        metrics = evaluate_stage(config, recommender, features)
    return config, features, recommender, metrics


def test_pipeline_evaluation_has_every_baseline_interval_and_the_protocol(evaluated) -> None:
    config, _, _, metrics = evaluated
    paths = Paths(config.output_path)
    report = json.loads((paths.reports / "evaluation.json").read_text())
    assert list(report["systems"]) == [
        "model",
        "oracle",
        "single_task",
        "popularity",
        "global_mean",
        "user_mean",
        "item_mean",
    ]
    for key in ("click_auc", "purchase_auc", "rating_rmse", "recall@10", "ndcg@10"):
        assert metrics[f"test/{key}_low"] <= metrics[f"test/{key}"] <= metrics[f"test/{key}_high"]
        assert f"diff/single_task/{key}_low" in metrics
    assert "diff/user_mean/rating_rmse_high" in metrics
    assert "single_task/click_auc" in metrics and "popularity/click_auc" in metrics
    protocol = report["protocol"]
    for split in ("train", "validation", "test"):
        digest = hashlib.sha256()
        for part in sorted((paths.features / split).glob("*.parquet")):
            digest.update(part.read_bytes())
        assert protocol["fingerprints"][split] == digest.hexdigest()
    assert protocol["model_selection"]["on"] == "validation"
    assert protocol["split"]["kind"] == config.features.split
    plots = {p.name for p in (paths.reports / "plots").iterdir()}
    assert plots == {
        "learning_curves.png",
        "task_weights.png",
        "calibration.png",
        "ranking_vs_k.png",
        "baselines.png",
    }


def test_training_cannot_read_the_test_split(evaluated) -> None:
    _, features, _, _ = evaluated
    withheld = features.without_test()
    with pytest.raises(RecsysError, match="test split"):
        _ = withheld.test
    assert set(withheld.splits) == {"train", "validation"}
    assert features.test.height > 0  # the original keeps it for evaluation


def test_single_task_baselines_are_reused_until_the_config_changes(evaluated) -> None:
    config, features, recommender, metrics = evaluated
    folder = Paths(config.output_path).baselines / "single_task"
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("model.pt")}
    assert len(stamps) == 3
    again = evaluate_stage(config, recommender, features)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("model.pt")} == stamps
    assert again["single_task/click_auc"] == metrics["single_task/click_auc"]


def test_per_task_selection_keeps_each_task_at_its_best_validation_epoch(
    evaluated, tmp_path: Path
) -> None:
    _, features, _, _ = evaluated
    baseline = single_task_config(_smoke(tmp_path, "training.epochs=6", "training.patience=2"))
    assert baseline.model.sharing == "none" and not baseline.tasks["purchase"].depends_on
    monitors = {n: task_monitor(n, t) for n, t in baseline.tasks.items()}
    with one_torch_thread():
        model, result, trainer = _fit(baseline, features.without_test(), None, None, monitors)
    validation = TensorData.from_frame(features.validation, baseline.tasks, features.transform)
    for task, monitor in monitors.items():
        values = [h[monitor] for h in result.history]
        best = int(np.argmin(values) if monitor.endswith("rmse") else np.argmax(values))
        assert result.task_epochs[task] == best + 1, (task, values)
        model.load_state_dict(trainer.task_states[task])
        predictions = predict_arrays(model, validation)
        labels = validation.labels[task].numpy()
        rows = ~np.isnan(labels)
        column = "rating_pred" if task == "rating" else f"p_{task}"
        score = (
            rmse(labels[rows], predictions[column][rows])
            if task == "rating"
            else auc(labels[rows], predictions[column][rows])
        )
        assert score == pytest.approx(values[best], abs=1e-6), task
    # Training ran until every task had been stale for `patience` epochs (or the cap).
    last = max(result.task_epochs.values())
    assert len(result.history) == min(last + 2, 6)


def test_seeds_report_mean_and_spread_of_each_seed(tmp_path: Path) -> None:
    pipeline = tmp_path / "smoke.toml"
    pipeline.write_text(SMOKE.read_text())
    overrides = [
        f"pipeline.output_dir='{tmp_path / 'out'}'",
        "tracking.enabled=false",
        "training.threads=1",
        "training.epochs=2",
        "evaluation.baselines=['popularity']",
        "evaluation.bootstrap=20",
    ]
    with one_torch_thread():
        folder = evaluate_seeds(pipeline, overrides, 2)
    summary = json.loads((folder / "seeds.json").read_text())
    assert summary["seeds"] == [7, 8]
    per_seed = [
        json.loads(
            (tmp_path / "out" / "seeds" / str(s) / "reports" / "evaluation.json").read_text()
        )
        for s in (7, 8)
    ]
    values = [r["systems"]["model"]["metrics"]["click_auc"] for r in per_seed]
    assert values[0] != values[1]
    entry = summary["systems"]["model"]["click_auc"]
    assert entry["mean"] == pytest.approx(np.mean(values))
    assert entry["std"] == pytest.approx(np.std(values, ddof=1))
    gap = summary["differences"]["popularity"]["click_auc"]["mean"]
    popularity = [r["systems"]["popularity"]["metrics"]["click_auc"] for r in per_seed]
    assert gap == pytest.approx(np.mean(values) - np.mean(popularity))
    assert "click_auc" in (folder / "seeds.md").read_text()
