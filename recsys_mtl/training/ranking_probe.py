"""Validation ranking: Recall/NDCG/HitRate@k of the click score during training.

Pointwise validation metrics (AUC, RMSE) say little about the top of a full ranking.
The probe ranks the whole training catalogue for the validation users the way the test
evaluation does, so `training.monitor = "val/recall@10"` selects the epoch that
retrieves best:

* a query is the user as of their first validation impression (its row features: the
  recency and history the user has when they come back);
* the catalogue is every item with a training row, each as of its latest training row;
* items the user clicked in training are excluded; relevant items are the user's
  validation clicks (an item missing from the catalogue still counts in the recall's
  denominator, as an unknown item does at test time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recsys_mtl.evaluation.metrics import ranking_metrics
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.model.multitask import MultiTaskModel
from recsys_mtl.training.tensors import TensorData

USER_CHUNK = 1024


def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of (row, item) pairs with rows in 0..n_users-1."""
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=n_users)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items[order]


@dataclass
class RankingProbe:
    """Queries (Q rows: one per validation user), catalogue (C rows: one per item), the
    seen mask as (query, catalogue position) pairs and the relevant items per query."""

    queries: TensorData
    catalogue: TensorData
    seen_queries: torch.Tensor
    seen_positions: torch.Tensor
    relevant_indptr: np.ndarray
    relevant_items: np.ndarray
    ks: list[int]

    @classmethod
    def from_frames(
        cls,
        train: pl.DataFrame,
        validation: pl.DataFrame,
        train_data: TensorData | Callable[[np.ndarray], TensorData],
        validation_data: TensorData,
        ks: list[int],
        max_users: int = 0,
        seed: int = 0,
    ) -> RankingProbe | None:
        """The probe of a split pair; `*_data` are the frames' tensors (same row order),
        or for the training rows a function reading rows by number (streamed training;
        then `train` need only hold user_idx, item_idx, timestamp and click).
        `max_users` > 0 keeps a seeded random sample of that many validation users.
        None when no validation user has a click on a known item."""
        clicked = validation.with_row_index("_row").filter(
            (pl.col("click") == 1) & (pl.col("item_idx") >= FIRST)
        )
        users = clicked["user_idx"].unique().sort()
        if users.len() == 0:
            return None
        if 0 < max_users < users.len():
            users = users.sample(max_users, seed=seed).sort()
        first_rows = (
            validation.with_row_index("_row")
            .filter(pl.col("user_idx").is_in(users.implode()))
            .sort("timestamp", "_row")
            .group_by("user_idx", maintain_order=True)
            .agg(pl.col("_row").first())
            .sort("user_idx")
        )
        latest_item_rows = (
            train.with_row_index("_row")
            .filter(pl.col("item_idx") >= FIRST)
            .sort("timestamp", "_row")
            .group_by("item_idx", maintain_order=True)
            .agg(pl.col("_row").last())
            .sort("item_idx")
        )
        catalogue_items = latest_item_rows["item_idx"].to_numpy()
        query_of_user = pl.DataFrame(
            {"user_idx": first_rows["user_idx"], "_query": np.arange(first_rows.height)}
        )
        position_of_item = pl.DataFrame(
            {"item_idx": catalogue_items, "_position": np.arange(len(catalogue_items))}
        )
        seen = (
            train.filter(pl.col("click") == 1)
            .select("user_idx", "item_idx")
            .unique()
            .join(query_of_user, on="user_idx")
            .join(position_of_item, on="item_idx")
        )
        relevant = (
            clicked.select("user_idx", "item_idx").unique().join(query_of_user, on="user_idx")
        )
        catalogue_rows = (
            train_data
            if callable(train_data)
            else lambda rows: train_data.take(torch.from_numpy(rows))
        )
        indptr, items = _csr(
            relevant["_query"].to_numpy(),
            relevant["item_idx"].to_numpy().astype(np.int64),
            first_rows.height,
        )
        return cls(
            queries=validation_data.take(
                torch.from_numpy(first_rows["_row"].to_numpy().astype(np.int64))
            ),
            catalogue=catalogue_rows(latest_item_rows["_row"].to_numpy().astype(np.int64)),
            seen_queries=torch.from_numpy(seen["_query"].to_numpy().astype(np.int64)),
            seen_positions=torch.from_numpy(seen["_position"].to_numpy().astype(np.int64)),
            relevant_indptr=indptr,
            relevant_items=items,
            ks=sorted(set(ks)),
        )

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel) -> dict[str, float]:
        """`recall@k`, `ndcg@k`, `hitrate@k` of the model's click score."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        catalogue = self.catalogue.to(device)
        items = model.item_vectors(model.item_encoder(catalogue.items, catalogue.item_rows))
        catalogue_items = catalogue.items
        seen_queries = self.seen_queries.to(device)
        seen_positions = self.seen_positions.to(device)
        k = min(max(self.ks), items.shape[0])
        n_queries = len(self.queries)
        top = np.empty((n_queries, max(self.ks)), dtype=np.int64)
        top[:, k:] = -1
        for start in range(0, n_queries, USER_CHUNK):
            chunk = self.queries.take(slice(start, start + USER_CHUNK)).to(device)
            users = model.user_vectors(model.user_encoder(chunk.users, chunk.user_rows))
            scores = users @ items.T
            in_chunk = (seen_queries >= start) & (seen_queries < start + len(chunk))
            scores[seen_queries[in_chunk] - start, seen_positions[in_chunk]] = -torch.inf
            values, positions = torch.topk(scores, k, dim=1)
            ranked = catalogue_items[positions]
            top[start : start + len(chunk), :k] = (
                torch.where(torch.isinf(values), -1, ranked).cpu().numpy()
            )
        model.train(was_training)
        return ranking_metrics(top, self.relevant_indptr, self.relevant_items, self.ks)
