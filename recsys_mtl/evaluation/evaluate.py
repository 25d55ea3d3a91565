"""Offline evaluation: pointwise metrics per task and full-ranking retrieval metrics.

Metric names are `<task>_<metric>` (click_auc, purchase_logloss, rating_rmse) and
`recall@k`, `ndcg@k`, `hitrate@k`. Ranking is over every known item with the items
the user interacted with in train and validation excluded; relevant items are the
user's test positives that are in the catalogue.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys_mtl.config import TaskConfig
from recsys_mtl.evaluation.metrics import auc, gauc, log_loss, mae, ranking_metrics, rmse
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.model.multitask import conditional_column, output_column
from recsys_mtl.recommender import Recommender, csr_rows
from recsys_mtl.training.tensors import TensorData

LOWER_IS_BETTER = ("loss", "logloss", "rmse", "mae", "ece")


def metric_higher_is_better(name: str) -> bool:
    """Direction of a metric from its name: losses and errors go down, the rest up."""
    leaf = name.rsplit("/", 1)[-1]
    return not any(leaf.endswith(suffix) for suffix in LOWER_IS_BETTER)


def metric_is_better(name: str, new: float, old: float) -> bool:
    if np.isnan(new):
        return False
    if np.isnan(old):
        return True
    return new > old if metric_higher_is_better(name) else new < old


def pointwise_metrics(
    data: TensorData, predictions: dict[str, np.ndarray], tasks: dict[str, TaskConfig]
) -> dict[str, float]:
    """AUC, GAUC and log loss for binary tasks, RMSE and MAE for regression, each on the
    rows where the task's label exists. A dependent task (purchase) also gets its AUC
    among the rows where its parent is positive (`purchase_auc_given_click`), scored by
    the conditional probability p(purchase | click) when the predictions hold it."""
    users = data.users.numpy()
    out: dict[str, float] = {}
    for name, task in tasks.items():
        if name not in data.labels:
            continue
        labels = data.labels[name].numpy()
        mask = ~np.isnan(labels)
        if not mask.any():
            continue
        pred = predictions[output_column(name, task)]
        if task.kind == "binary":
            y, p = labels[mask], pred[mask]
            out[f"{name}_auc"] = auc(y, p)
            out[f"{name}_gauc"] = gauc(users[mask], y, p)
            out[f"{name}_logloss"] = log_loss(y, p)
            parent = task.depends_on
            if parent and parent in data.labels:
                given = mask & (data.labels[parent].numpy() == 1)
                conditional = predictions.get(conditional_column(name, task), pred)
                out[f"{name}_auc_given_{parent}"] = auc(labels[given], conditional[given])
        else:
            out[f"{name}_rmse"] = rmse(labels[mask], pred[mask])
            out[f"{name}_mae"] = mae(labels[mask], pred[mask])
    return out


def oracle_predictions(frame: pl.DataFrame, tasks: dict[str, TaskConfig]) -> dict[str, np.ndarray]:
    """The synthetic oracle's predictions (`true_p_<task>`, `true_<task>` columns), if any."""
    out = {}
    for name, task in tasks.items():
        column = f"true_p_{name}" if task.kind == "binary" else f"true_{name}"
        if column in frame.columns:
            out[output_column(name, task)] = frame[column].cast(pl.Float64).to_numpy()
    return out


def interactions_csr(frame: pl.DataFrame, user_order: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Positive (click = 1) known items of each user in `user_order`, as CSR
    (indptr (U + 1,), item indices (nnz,))."""
    positives = frame.filter((pl.col("click") == 1) & (pl.col("item_idx") >= FIRST))
    order = pl.DataFrame({"user_id": user_order, "_row": np.arange(len(user_order))})
    rows = (
        positives.select("user_id", "item_idx")
        .unique()
        .join(order, on="user_id", how="inner")
        .sort("_row", "item_idx")
    )
    counts = np.bincount(rows["_row"].to_numpy(), minlength=len(user_order))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, rows["item_idx"].to_numpy().astype(np.int64)


def ranking_evaluation(
    recommender: Recommender,
    test: pl.DataFrame,
    ks: list[int],
    item_popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking Recall/NDCG/HitRate@k of the click score over all known items.

    Users are the test users with at least one known relevant item (a click on an item
    in the catalogue); the items they interacted with before (the bundle's seen items)
    are excluded. Ranking is exact (a Flat index over the item vectors), whatever index
    the bundle serves with. With `item_popularity` (n_items - 2,) also the popularity
    baseline under `popularity/...` keys.

    Each user's request is served as of the user's first test impression (its
    timestamp, when `test` has one): the moment the user comes back, so time features
    such as the recency of the user's previous event are what they would be then.
    """
    from recsys_mtl.retrieval.index import ItemIndex

    request_times = (
        test.group_by("user_id").agg(pl.col("timestamp").min())
        if "timestamp" in test.columns
        else None
    )
    test = recommender.transform.encode_pairs(test.select("user_id", "item_id", "click"))
    test_users = (
        test.filter((pl.col("click") == 1) & (pl.col("item_idx") >= FIRST))
        .get_column("user_id")
        .unique(maintain_order=True)
    )
    if test_users.len() == 0:
        return {}
    user_idx = recommender.transform.users.ids.encode(test_users).to_numpy().astype(np.int64)
    seen_indptr, seen_items = csr_rows(recommender.seen_indptr, recommender.seen_items, user_idx)
    rel_indptr, rel_items = interactions_csr(test, test_users)
    k_max = max(ks)
    requests = pl.DataFrame({"user_id": test_users})
    if request_times is not None:
        requests = requests.join(request_times, on="user_id", how="left", maintain_order="left")
    user_vectors = recommender.user_vectors(requests)
    rankers = {"": (ItemIndex.build(recommender.item_vectors(), "Flat"), user_vectors)}
    if item_popularity is not None:
        rankers["popularity/"] = (
            ItemIndex.build(item_popularity.astype(np.float32)[:, None], "Flat"),
            np.ones((len(user_idx), 1), np.float32),
        )
    metrics: dict[str, float] = {}
    for prefix, (index, queries) in rankers.items():
        _, top = index.search(queries, k_max, seen_indptr, seen_items - FIRST)
        top = np.where(top >= 0, top + FIRST, -1)
        ranked = ranking_metrics(top, rel_indptr, rel_items, ks)
        metrics.update({f"{prefix}{k}": v for k, v in ranked.items()})
    return metrics
