"""Offline evaluation of several systems (the model and its baselines) on one test split,
with user-level bootstrap intervals, paired differences and per-segment metrics.

A `System` is what a model or a baseline predicts for the test rows (one column per task
it covers) and, when it can rank, its top items for the ranking users. `evaluate_systems`
scores every system on the same rows and users and resamples users (not rows: a user's
rows are correlated) with one set of bootstrap counts shared by all systems, so the
difference between the model and a baseline has a paired interval. Everything is
vectorised over rows and users; the loops run over systems, tasks and cut-offs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys_mtl.config import TaskConfig
from recsys_mtl.evaluation.bootstrap import (
    bootstrap_auc,
    bootstrap_mean,
    bootstrap_rmse,
    paired_difference_interval,
    percentile_interval,
    resample_counts,
)
from recsys_mtl.evaluation.metrics import (
    auc,
    calibration_curve,
    calibration_ratio,
    catalogue_coverage,
    expected_calibration_error,
    log_loss,
    mae,
    mean_popularity,
    per_user_auc,
    per_user_ranking,
    rmse,
)
from recsys_mtl.model.multitask import conditional_column, output_column

MODEL = "model"
RANKING_NAMES = ("recall", "ndcg", "precision", "hitrate", "mrr")
CALIBRATION_BINS = 10


@dataclass
class System:
    """One scorer's output on the test set.

    `predictions`: output column (p_click, p_purchase, rating_pred, ...) -> (N,) scores for
    the test rows; `probabilities` says whether binary scores are probabilities (log loss
    and calibration are skipped for e.g. popularity counts). `top_items` (U_r, K_max):
    ranked item indices for the ranking users (-1 pads), or None if it cannot rank.
    """

    name: str
    description: str
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    probabilities: bool = True
    top_items: np.ndarray | None = None


@dataclass
class EvaluationData:
    """The labels and users a set of systems is scored on.

    `row_user` (N,): user index (0..U-1) of each test row; `labels`: task -> (N,) float
    label, NaN where the row has none. `ranking_user` (U_r,): user index of each ranking
    user, whose relevant items are `relevant_items[relevant_indptr[i]:relevant_indptr[i+1]]`.
    `user_events` (U,): each user's interactions before the test (train + validation
    positives), which defines the segments. `item_popularity` (n_items,): training clicks
    per item index; `n_catalogue`: items a system may recommend, whose indices start at
    `first_item` (indices below it are reserved, e.g. padding and unknown).
    """

    row_user: np.ndarray
    labels: dict[str, np.ndarray]
    ranking_user: np.ndarray
    relevant_indptr: np.ndarray
    relevant_items: np.ndarray
    user_events: np.ndarray
    item_popularity: np.ndarray
    n_catalogue: int
    first_item: int = 0

    @property
    def n_users(self) -> int:
        return len(self.user_events)


@dataclass
class _Scope:
    """The rows and ranking users a metric is computed over (all, or one segment)."""

    rows: np.ndarray  # bool (N,)
    ranking: np.ndarray  # bool (U_r,)


def _binary_scores(
    system: System, name: str, task: TaskConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(score, conditional score for the AUC among parent positives) of a binary task."""
    score = system.predictions.get(output_column(name, task))
    if score is None or not task.depends_on:
        return score, None
    return score, system.predictions.get(conditional_column(name, task), score)


def _ranking_values(
    test: EvaluationData, system: System, ks: Sequence[int]
) -> dict[str, np.ndarray] | None:
    if system.top_items is None:
        return None
    return per_user_ranking(system.top_items, test.relevant_indptr, test.relevant_items, ks)


def _point_metrics(
    test: EvaluationData,
    system: System,
    tasks: dict[str, TaskConfig],
    ks: Sequence[int],
    scope: _Scope,
    ranking: dict[str, np.ndarray] | None,
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, task in tasks.items():
        labels = test.labels.get(name)
        if labels is None:
            continue
        rows = scope.rows & ~np.isnan(labels)
        if task.kind == "binary":
            score, conditional = _binary_scores(system, name, task)
            if score is None or not rows.any():
                continue
            y, p = labels[rows], score[rows]
            out[f"{name}_auc"] = auc(y, p)
            _, user_auc, n_rows = per_user_auc(test.row_user[rows], y, p)
            out[f"{name}_gauc"] = (
                float(np.average(user_auc, weights=n_rows)) if len(user_auc) else float("nan")
            )
            if system.probabilities:
                out[f"{name}_logloss"] = log_loss(y, p)
                out[f"{name}_ece"] = expected_calibration_error(y, p, CALIBRATION_BINS)
                out[f"{name}_calibration_ratio"] = calibration_ratio(y, p)
            parent = test.labels.get(task.depends_on) if task.depends_on else None
            if conditional is not None and parent is not None:
                given = rows & (parent == 1)
                out[f"{name}_auc_given_{task.depends_on}"] = auc(labels[given], conditional[given])
        else:
            pred = system.predictions.get(output_column(name, task))
            if pred is None or not rows.any():
                continue
            out[f"{name}_rmse"] = rmse(labels[rows], pred[rows])
            out[f"{name}_mae"] = mae(labels[rows], pred[rows])
    if ranking is not None and system.top_items is not None and scope.ranking.any():
        for key, values in ranking.items():
            kept = values[scope.ranking]
            kept = kept[~np.isnan(kept)]
            out[key] = float(kept.mean()) if kept.size else float("nan")
        top = system.top_items[scope.ranking]
        for k in ks:
            catalogue_top = np.where(top >= 0, top - test.first_item, -1)
            out[f"coverage@{k}"] = catalogue_coverage(catalogue_top, test.n_catalogue, k)
            out[f"mean_popularity@{k}"] = mean_popularity(top, test.item_popularity, k)
    return out


def _replicates(
    test: EvaluationData,
    system: System,
    tasks: dict[str, TaskConfig],
    ranking: dict[str, np.ndarray] | None,
    counts: np.ndarray,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates (R,) of every metric that has them."""
    out: dict[str, np.ndarray] = {}
    for name, task in tasks.items():
        labels = test.labels.get(name)
        if labels is None:
            continue
        rows = ~np.isnan(labels)
        users = test.row_user[rows]
        if task.kind == "binary":
            score, conditional = _binary_scores(system, name, task)
            if score is None or not rows.any():
                continue
            y, p = labels[rows], score[rows]
            out[f"{name}_auc"] = bootstrap_auc(y, p, users, counts)
            groups, user_auc, n_rows = per_user_auc(users, y, p)
            if len(user_auc):
                owner = np.unique(users)[groups]
                out[f"{name}_gauc"] = bootstrap_mean(user_auc, owner, counts, weights=n_rows)
            if system.probabilities:
                clipped = np.clip(p, 1e-7, 1 - 1e-7)
                losses = -np.where(y == 1, np.log(clipped), np.log1p(-clipped))
                out[f"{name}_logloss"] = bootstrap_mean(losses, users, counts)
            parent = test.labels.get(task.depends_on) if task.depends_on else None
            if conditional is not None and parent is not None:
                given = rows & (parent == 1)
                out[f"{name}_auc_given_{task.depends_on}"] = bootstrap_auc(
                    labels[given], conditional[given], test.row_user[given], counts
                )
        else:
            pred = system.predictions.get(output_column(name, task))
            if pred is None or not rows.any():
                continue
            out[f"{name}_rmse"] = bootstrap_rmse(labels[rows], pred[rows], users, counts)
            out[f"{name}_mae"] = bootstrap_mean(np.abs(pred[rows] - labels[rows]), users, counts)
    if ranking is not None:
        for key, values in ranking.items():
            out[key] = bootstrap_mean(values, test.ranking_user, counts)
    return out


def segment_masks(test: EvaluationData, cold_max_events: int) -> dict[str, np.ndarray]:
    """User masks (U,): 'cold' users with at most `cold_max_events` interactions before
    the test, 'active' users with more."""
    cold = test.user_events <= cold_max_events
    return {"cold": cold, "active": ~cold}


def evaluate_systems(
    test: EvaluationData,
    systems: Sequence[System],
    tasks: dict[str, TaskConfig],
    ks: Sequence[int],
    *,
    curve_ks: Sequence[int] = (),
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    cold_max_events: int = 10,
) -> dict[str, Any]:
    """Score every system; the first is the model the others are compared with.

    Returns a JSON-able report: per system its metrics and bootstrap intervals; per
    baseline the paired difference (model - baseline) with its interval; per segment
    (cold / active users) every system's metrics; calibration curves; Recall/NDCG at
    every cut-off in `curve_ks` (needs top_items that deep).
    """
    if not systems:
        raise ValueError("evaluate_systems needs at least one system (the model first)")
    all_ks = sorted({*ks, *[k for k in curve_ks if all_systems_deep(systems, k)]})
    counts = resample_counts(test.n_users, resamples, seed) if resamples else None
    everything = _Scope(np.ones(len(test.row_user), bool), np.ones(len(test.ranking_user), bool))
    report: dict[str, Any] = {"systems": {}, "differences": {}, "segments": {}}
    replicates: dict[str, dict[str, np.ndarray]] = {}
    rankings: dict[str, dict[str, np.ndarray] | None] = {}
    for system in systems:
        ranking = _ranking_values(test, system, all_ks)
        rankings[system.name] = ranking
        headline = (
            {key: v for key, v in ranking.items() if int(key.split("@")[1]) in ks}
            if ranking is not None
            else None
        )
        metrics = _point_metrics(test, system, tasks, ks, everything, headline)
        entry: dict[str, Any] = {"description": system.description, "metrics": metrics}
        if counts is not None:
            reps = _replicates(test, system, tasks, headline, counts)
            replicates[system.name] = reps
            entry["intervals"] = {
                key: list(percentile_interval(values, level)) for key, values in reps.items()
            }
        report["systems"][system.name] = entry
    model = systems[0].name
    for system in systems[1:]:
        ours, theirs = report["systems"][model]["metrics"], report["systems"][system.name]
        shared = [key for key in theirs["metrics"] if key in ours]
        differences = {}
        for key in shared:
            entry = {"difference": ours[key] - theirs["metrics"][key]}
            if counts is not None and key in replicates[model] and key in replicates[system.name]:
                low, high = paired_difference_interval(
                    replicates[model][key], replicates[system.name][key], level
                )
                entry.update({"low": low, "high": high})
            differences[key] = entry
        report["differences"][system.name] = differences
    for segment, users in segment_masks(test, cold_max_events).items():
        scope = _Scope(users[test.row_user], users[test.ranking_user])
        report["segments"][segment] = {
            "users": int(users.sum()),
            "ranking_users": int(scope.ranking.sum()),
            "definition": (
                f"<= {cold_max_events} interactions before the test"
                if segment == "cold"
                else f"> {cold_max_events} interactions before the test"
            ),
            "systems": {
                s.name: _point_metrics(
                    test,
                    s,
                    tasks,
                    ks,
                    scope,
                    None
                    if rankings[s.name] is None
                    else {k: v for k, v in rankings[s.name].items() if int(k.split("@")[1]) in ks},
                )
                for s in systems
            },
        }
    report["calibration"] = calibration_curves(test, systems, tasks)
    report["ranking_curves"] = {
        name: {
            "k": all_ks,
            **{
                metric: [
                    float(np.nanmean(ranking[f"{metric}@{k}"])) if len(test.ranking_user) else None
                    for k in all_ks
                ]
                for metric in ("recall", "ndcg")
            },
        }
        for name, ranking in rankings.items()
        if ranking is not None
    }
    report["bootstrap"] = {
        "unit": "user",
        "resamples": resamples,
        "level": level,
        "seed": seed,
        "users": test.n_users,
        "ranking_users": len(test.ranking_user),
        "rows": len(test.row_user),
    }
    return report


def all_systems_deep(systems: Sequence[System], k: int) -> bool:
    """Whether every ranking system retrieved at least k items per user."""
    return all(s.top_items is None or s.top_items.shape[1] >= k for s in systems)


def calibration_curves(
    test: EvaluationData, systems: Sequence[System], tasks: dict[str, TaskConfig]
) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """system -> binary task -> equal-width-bin mean prediction, observed rate, count."""
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for system in systems:
        if not system.probabilities:
            continue
        for name, task in tasks.items():
            score = system.predictions.get(output_column(name, task))
            labels = test.labels.get(name)
            if task.kind != "binary" or score is None or labels is None:
                continue
            rows = ~np.isnan(labels)
            predicted, observed, count = calibration_curve(
                labels[rows], score[rows], CALIBRATION_BINS
            )
            out.setdefault(system.name, {})[name] = {
                "predicted": _nullable(predicted),
                "observed": _nullable(observed),
                "count": count.astype(int).tolist(),
            }
    return out


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """MLflow-style keys: test/<metric> (the model), <system>/<metric>, each with
    _low/_high interval bounds, diff/<system>/<metric> for the paired differences, and
    segment/<segment>/<system>/<metric>."""
    flat: dict[str, float] = {}
    for index, (name, entry) in enumerate(report["systems"].items()):
        prefix = "test" if index == 0 else name
        for key, value in entry["metrics"].items():
            flat[f"{prefix}/{key}"] = value
        for key, (low, high) in entry.get("intervals", {}).items():
            flat[f"{prefix}/{key}_low"], flat[f"{prefix}/{key}_high"] = low, high
    for name, differences in report["differences"].items():
        for key, entry in differences.items():
            flat[f"diff/{name}/{key}"] = entry["difference"]
            if "low" in entry:
                flat[f"diff/{name}/{key}_low"] = entry["low"]
                flat[f"diff/{name}/{key}_high"] = entry["high"]
    for segment, entry in report["segments"].items():
        for name, metrics in entry["systems"].items():
            for key, value in metrics.items():
                flat[f"segment/{segment}/{name}/{key}"] = value
    return {k: float(v) for k, v in flat.items() if v is not None}
