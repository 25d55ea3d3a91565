"""The systems an evaluation compares: the model, the synthetic oracle and the baselines
(popularity, global / user / item mean rating, single-task models), each turned into an
`offline.System` on the same test rows and ranking users.

Models are scored through `Recommender.predict` on the raw test rows: the path that
`recsys-mtl predict` and `evaluate --model --input` run, so the reported number is the
one the shipped bundle gives. Baselines only use what the model had: the interactions
before the test. Unknown users and items fall back to the global statistic.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys_mtl.config import TaskConfig
from recsys_mtl.evaluation.evaluate import RankingQueries, oracle_predictions
from recsys_mtl.evaluation.offline import EvaluationData, System
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.model.multitask import conditional_column, output_column
from recsys_mtl.recommender import Recommender


def build_test_set(
    recommender: Recommender,
    test: pl.DataFrame,
    queries: RankingQueries,
    tasks: dict[str, TaskConfig],
) -> EvaluationData:
    """Labels and users of `test` (raw or encoded impressions) for `evaluate_systems`."""
    user_ids = test.get_column("user_id").unique(maintain_order=True)
    position = pl.DataFrame({"user_id": user_ids, "_user": np.arange(user_ids.len())})
    row_user = (
        test.select("user_id")
        .join(position, on="user_id", how="left", maintain_order="left")
        .get_column("_user")
        .to_numpy()
        .astype(np.int64)
    )
    ranking_user = (
        pl.DataFrame({"user_id": queries.user_ids})
        .join(position, on="user_id", how="left", maintain_order="left")
        .get_column("_user")
        .to_numpy()
        .astype(np.int64)
    )
    user_idx = recommender.transform.users.ids.encode(user_ids).to_numpy().astype(np.int64)
    first_time = (
        test.group_by("user_id")
        .agg(pl.col("timestamp").min().cast(pl.Int64))
        .join(pl.DataFrame({"user_id": user_ids}), on="user_id", how="right")
        .get_column("timestamp")
        .to_numpy()
        if "timestamp" in test.columns
        else None
    )
    seen_counts = np.diff(recommender.seen_before(user_idx, first_time)[0])
    labels = {
        name: test.get_column(task.label).cast(pl.Float64).fill_null(np.nan).to_numpy()
        for name, task in tasks.items()
        if task.label in test.columns
    }
    return EvaluationData(
        row_user=row_user,
        labels=labels,
        ranking_user=ranking_user,
        relevant_indptr=queries.relevant_indptr,
        relevant_items=queries.relevant_items,
        user_events=seen_counts,
        item_popularity=item_popularity(recommender, test).astype(np.float64),
        n_catalogue=recommender.n_items - FIRST,
        first_item=FIRST,
    )


def item_popularity(recommender: Recommender, test: pl.DataFrame | None = None) -> np.ndarray:
    """(n_items,) how many users clicked each item, among the bundle's seen entries
    less the (user, item) pairs of `test` (the bundle may hold the evaluated rows'
    own events; they are not "before the test")."""
    counts = np.bincount(recommender.seen_items, minlength=recommender.n_items)
    if test is None or "click" not in test.columns:
        return counts
    encoded = recommender.transform.encode_pairs(
        test.filter(pl.col("click") == 1).select("user_id", "item_id").unique()
    )
    user_idx = encoded["user_idx"].to_numpy().astype(np.int64)
    item_idx = encoded["item_idx"].to_numpy().astype(np.int64)
    known = (user_idx >= FIRST) & (item_idx >= FIRST)
    held = np.unique(user_idx[known] * recommender.n_items + item_idx[known])
    pairs = recommender.seen_rows() * recommender.n_items + recommender.seen_items
    in_test = np.isin(pairs, held)
    return counts - np.bincount(recommender.seen_items[in_test], minlength=recommender.n_items)


def served_predictions(recommender: Recommender, test: pl.DataFrame) -> dict[str, np.ndarray]:
    """Every head on the raw test rows through `Recommender.predict` (the served path)."""
    return {name: column.to_numpy() for name, column in recommender.predict(test).to_dict().items()}


def model_system(
    name: str,
    description: str,
    recommender: Recommender,
    test: pl.DataFrame,
    queries: RankingQueries,
    depth: int,
) -> System:
    """A trained model: every head on the test rows as served, exact top-`depth` for
    ranking."""
    return System(
        name,
        description,
        predictions=served_predictions(recommender, test),
        top_items=queries.top_items(recommender, depth),
    )


def single_task_system(
    models: dict[str, Recommender],
    test: pl.DataFrame,
    queries: RankingQueries,
    depth: int,
    retrieval_task: str,
) -> System:
    """One model per task (`models`: task -> its single-task model); each task's column
    comes from its own model, and the retrievable task's model ranks."""
    predictions: dict[str, np.ndarray] = {}
    for task, recommender in models.items():
        column = output_column(task, recommender.model.tasks[task])
        predictions[column] = served_predictions(recommender, test)[column]
    ranker = models.get(retrieval_task)
    return System(
        "single_task",
        "one model per task (sharing = none, no task dependencies), each early-stopped on "
        "its own validation metric",
        predictions=predictions,
        top_items=None if ranker is None else queries.top_items(ranker, depth),
    )


def oracle_system(frame: pl.DataFrame, tasks: dict[str, TaskConfig]) -> System | None:
    """The synthetic data's true probabilities and ratings, when every task has them."""
    predictions = oracle_predictions(frame, tasks)
    if len(predictions) != len(tasks):
        return None
    for name, task in tasks.items():  # the true conditional of a funnel task
        if task.depends_on and task.kind == "binary":
            parent = predictions[output_column(task.depends_on, tasks[task.depends_on])]
            joint = predictions[output_column(name, task)]
            predictions[conditional_column(name, task)] = joint / np.maximum(parent, 1e-12)
    return System("oracle", "the generating model's true probabilities", predictions)


def popularity_system(
    recommender: Recommender,
    test: pl.DataFrame,
    queries: RankingQueries,
    depth: int,
    tasks: dict[str, TaskConfig],
    interactions: pl.DataFrame | None = None,
) -> System:
    """Scores every impression by how many users interacted with its item before the
    test (purchase by earlier purchases, when `interactions` has them) and recommends
    the most popular unseen items."""
    clicks = item_popularity(recommender, test).astype(np.float64)
    item_idx = recommender.transform.items.ids.encode(test.get_column("item_id")).to_numpy()
    predictions = {}
    for name, task in tasks.items():
        if task.kind != "binary":
            continue
        counts = clicks
        if interactions is not None and task.head != "dot" and task.label in interactions.columns:
            positive = interactions.filter(pl.col(task.label) == 1)
            counts = np.bincount(
                positive.get_column("item_idx").to_numpy(), minlength=recommender.n_items
            ).astype(np.float64)
        predictions[output_column(name, task)] = counts[item_idx]
    return System(
        "popularity",
        "items ranked by how many users interacted with them before the test",
        predictions,
        probabilities=False,
        top_items=queries.top_by_score(clicks, depth),
    )


def rating_mean_systems(
    interactions: pl.DataFrame, test: pl.DataFrame, tasks: dict[str, TaskConfig]
) -> list[System]:
    """Global, per-user and per-item mean of each regression label before the test; an
    unknown user or item gets the global mean."""
    systems: dict[str, System] = {
        "global_mean": System("global_mean", "the mean rating before the test"),
        "user_mean": System("user_mean", "the user's mean rating (global mean if none)"),
        "item_mean": System("item_mean", "the item's mean rating (global mean if none)"),
    }
    for name, task in tasks.items():
        if task.kind != "regression" or task.label not in interactions.columns:
            continue
        rated = interactions.filter(pl.col(task.label).is_not_null()).select(
            "user_id", "item_id", pl.col(task.label).cast(pl.Float64).alias("_y")
        )
        if rated.height == 0:
            continue
        overall = float(rated.get_column("_y").mean())
        column = output_column(name, task)
        systems["global_mean"].predictions[column] = np.full(test.height, overall)
        for system, key in (("user_mean", "user_id"), ("item_mean", "item_id")):
            means = rated.group_by(key).agg(pl.col("_y").mean())
            systems[system].predictions[column] = (
                test.select(key)
                .join(means, on=key, how="left", maintain_order="left")
                .get_column("_y")
                .fill_null(overall)
                .to_numpy()
            )
    return [s for s in systems.values() if s.predictions]
