"""Offline evaluation: pointwise metrics per task and full-ranking retrieval metrics.

Metric names are `<task>_<metric>` (click_auc, purchase_logloss, rating_rmse) and
`recall@k`, `ndcg@k`, `hitrate@k`. Ranking is over every known item with the items
the user had clicked as of the request excluded (the bundle's seen entries visible
before the user's first test impression); relevant items are the user's test
positives that are in the catalogue.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from recsys_mtl.config import TaskConfig
from recsys_mtl.evaluation.metrics import auc, gauc, log_loss, mae, ranking_metrics, rmse
from recsys_mtl.features.state import read_times
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.model.multitask import conditional_column, output_column
from recsys_mtl.recommender import Recommender
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


class RankingQueries:
    """The full-ranking protocol on one test frame: who is ranked, as of when, what is
    relevant and what is excluded.

    Users are the test users with at least one relevant item (a click on an item in the
    catalogue); the items they interacted with before (the bundle's seen items) are
    excluded. Each user's request is served as of the user's first test impression (its
    timestamp, when the frame has one): the moment the user comes back, so time features
    such as the recency of the user's previous event are what they would be then.
    """

    def __init__(self, recommender: Recommender, test: pl.DataFrame) -> None:
        request_times = (
            test.group_by("user_id").agg(pl.col("timestamp").min())
            if "timestamp" in test.columns
            else None
        )
        encoded = recommender.transform.encode_pairs(test.select("user_id", "item_id", "click"))
        self.user_ids = (
            encoded.filter((pl.col("click") == 1) & (pl.col("item_idx") >= FIRST))
            .get_column("user_id")
            .unique(maintain_order=True)
        )
        user_idx = recommender.transform.users.ids.encode(self.user_ids).to_numpy()
        self.relevant_indptr, self.relevant_items = interactions_csr(encoded, self.user_ids)
        requests = pl.DataFrame({"user_id": self.user_ids})
        if request_times is not None:
            requests = requests.join(request_times, on="user_id", how="left", maintain_order="left")
        self.requests = requests
        # what the user had clicked as of the request (the bundle may hold later events)
        self.seen_indptr, self.seen_items = recommender.seen_before(
            user_idx.astype(np.int64), read_times(requests)
        )

    def __len__(self) -> int:
        return self.user_ids.len()

    def top_items(self, recommender: Recommender, k: int) -> np.ndarray:
        """(U, k) item vocabulary indices, best first, by the exact click score (-1 pads)."""
        from recsys_mtl.retrieval.index import ItemIndex

        index = ItemIndex.build(recommender.item_vectors(), "Flat")
        return self._search(index, recommender.user_vectors(self.requests), k)

    def top_by_score(self, item_scores: np.ndarray, k: int) -> np.ndarray:
        """(U, k) the highest-scoring unseen items for every user (e.g. popularity);
        `item_scores` (n_items,) by vocabulary index; ties go to the lower index."""
        from recsys_mtl.retrieval.index import ordered_topk

        scores = np.asarray(item_scores[FIRST:], dtype=np.float64)
        order = np.lexsort((np.arange(scores.size), -scores))
        top = ordered_topk(order, len(self), k, self.seen_indptr, self.seen_items - FIRST)
        return np.where(top >= 0, top + FIRST, -1)

    def _search(self, index: Any, queries: np.ndarray, k: int) -> np.ndarray:
        if len(self) == 0:
            return np.zeros((0, k), np.int64)
        depth = min(k, index.n_items)
        _, top = index.search(queries, depth, self.seen_indptr, self.seen_items - FIRST)
        top = np.where(top >= 0, top + FIRST, -1)
        if depth < k:  # a catalogue smaller than k: pad, so every cut-off up to k exists
            top = np.pad(top, ((0, 0), (0, k - depth)), constant_values=-1)
        return top


def ranking_evaluation(
    recommender: Recommender,
    test: pl.DataFrame,
    ks: list[int],
    item_popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking Recall/NDCG/HitRate/Precision/MRR@k of the click score over all
    known items (see `RankingQueries` for the protocol; ranking is exact, a Flat index
    over the item vectors, whatever index the bundle serves with). With
    `item_popularity` (n_items - 2,) also the popularity baseline under `popularity/...`
    keys."""
    queries = RankingQueries(recommender, test)
    if len(queries) == 0:
        return {}
    k_max = max(ks)
    rankers = {"": queries.top_items(recommender, k_max)}
    if item_popularity is not None:
        scores = np.concatenate([np.zeros(FIRST, np.float32), item_popularity])
        rankers["popularity/"] = queries.top_by_score(scores, k_max)
    metrics: dict[str, float] = {}
    for prefix, top in rankers.items():
        ranked = ranking_metrics(top, queries.relevant_indptr, queries.relevant_items, ks)
        metrics.update({f"{prefix}{k}": v for k, v in ranked.items()})
    return metrics
