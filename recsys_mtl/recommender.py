"""The trained recommender as one bundle: model + feature transform + seen items + index.

Bundle folder (written under a temporary name, then renamed into place):
  manifest.json   format version, library versions, sha256 of every file
  model.pt        the model's state_dict (loaded with weights_only=True)
  model.json      architecture, tasks, retrieval settings
  transform/      vocabularies and side tables (see features.transform)
  seen.npz        items each known user clicked, with the time each became visible
                  (CSR over user indices: indptr, items, visible_at)
  index.faiss     the FAISS index of item vectors (+ index.json), once built
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import torch

from recsys_mtl.atomic import atomic_path
from recsys_mtl.config import ModelSection, RetrievalSection, TaskConfig
from recsys_mtl.data.schema import to_polars
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import replace_folder
from recsys_mtl.features.state import read_times
from recsys_mtl.features.transform import FeatureTransform
from recsys_mtl.features.vocab import FIRST, UNKNOWN
from recsys_mtl.model.embeddings import RowInputs, SideInputs
from recsys_mtl.model.multitask import (
    MultiTaskModel,
    model_from_metadata,
    model_metadata,
    output_column,
)
from recsys_mtl.retrieval.fusion import check_fusion, fuse, fused_score
from recsys_mtl.retrieval.index import ItemIndex, csr_rows, ordered_topk
from recsys_mtl.training.tensors import row_inputs

FORMAT_VERSION = 2
CHUNK_USERS = 1024
LOGGER = logging.getLogger("recsys_mtl")

SOURCE_MODEL, SOURCE_SIDE_FEATURES, SOURCE_POPULARITY = "model", "side_features", "popularity"
SOURCES = (SOURCE_MODEL, SOURCE_SIDE_FEATURES, SOURCE_POPULARITY)
"""Where a user's candidates come from: the index with the user's own vector (known
users), the index with a vector from side features (unknown users with features), or
the most popular items (unknown users without features)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Recommender:
    """Scores impressions (`predict`) and answers retrieval queries (`recommend`)."""

    def __init__(
        self,
        model: MultiTaskModel,
        transform: FeatureTransform,
        seen_indptr: np.ndarray,
        seen_items: np.ndarray,
        retrieval: RetrievalSection,
        model_cfg: ModelSection,
        index: ItemIndex | None = None,
        seen_visible: np.ndarray | None = None,
    ) -> None:
        self.model = model.eval()
        self.model_cfg = model_cfg
        self.transform = transform
        self.seen_indptr = seen_indptr
        self.seen_items = seen_items
        # when each seen entry entered the state (reads as of t exclude entries < t only)
        self.seen_visible = (
            seen_visible
            if seen_visible is not None
            else np.full(seen_items.size, np.iinfo(np.int64).min, dtype=np.int64)
        )
        self.retrieval = retrieval
        self.index = index
        self._item_rows: RowInputs | None = None
        self._popular: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_training(
        cls,
        model: MultiTaskModel,
        transform: FeatureTransform,
        interactions: pl.DataFrame,
        retrieval: RetrievalSection,
        model_cfg: ModelSection,
    ) -> Recommender:
        """`interactions`: every event the bundle is given (all splits), with user_idx,
        item_idx, click and (for as-of reads) visible_at; its positives are the seen
        items, each excluded from requests at or after the time it became visible."""
        indptr, items, visible = seen_csr(interactions, transform.users.ids.size)
        return cls(model, transform, indptr, items, retrieval, model_cfg, seen_visible=visible)

    def seen_rows(self) -> np.ndarray:
        """(nnz,) the user index of every seen entry (the CSR's rows, expanded)."""
        return np.repeat(np.arange(len(self.seen_indptr) - 1), np.diff(self.seen_indptr))

    def seen_before(
        self, user_idx: np.ndarray, times: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items (vocabulary indices) each user in `user_idx` had clicked as of `times`
        (R,) int64 (entries visible strictly before; None: every entry), as CSR."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        indptr, items = csr_rows(self.seen_indptr, self.seen_items, user_idx)
        if times is None:
            return indptr, items
        _, visible = csr_rows(self.seen_indptr, self.seen_visible, user_idx)
        row_time = np.repeat(np.asarray(times, dtype=np.int64), np.diff(indptr))
        keep = visible < row_time
        if keep.all():
            return indptr, items
        kept = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
        return kept[indptr], items[keep]

    def observe(self, events: Any, where: str = "events") -> int:
        """Take new events (an impressions table: user_id, item_id, timestamp, click,
        purchase, rating) into the serving state and the seen set, without retraining.
        Under `online` freshness each event is visible from its own time; under
        `snapshot` the call publishes one new snapshot per user, visible from the user's
        latest new event. Events the bundle already holds (same user, item, time and
        labels) are ignored, so re-sending them changes nothing. Returns how many were
        new. `save` writes the new state version atomically."""
        new = self._unheld_events(events, where)
        if new.height == 0:
            return 0
        history = self.transform.history
        freshness = history.spec.freshness if history is not None else "online"
        if freshness == "online":
            when = pl.col("timestamp")
        else:
            when = pl.col("timestamp").max().over("user_id")
        new = self.transform.encode_pairs(new, where).with_columns(
            when.cast(pl.Int64).alias("visible_at")
        )
        if history is not None:
            history.add_events(new)
        self._add_seen(new)
        return new.height

    def with_events(self, events: Any, users: Any, where: str = "request events") -> Recommender:
        """A view of this bundle that also knows `events` (a user's latest, e.g. carried
        by a request), each visible from its own time, for requests about `users` (raw
        ids; every user of `events` is included): their history features and seen sets
        read the bundle's state plus these events (items keep this bundle's features and
        index). Events the bundle already holds are not counted twice. Nothing is
        written and this bundle does not change (use `observe` to keep events)."""
        new = self._unheld_events(events, where)
        if new.height == 0:
            return self
        new = self.transform.encode_pairs(new, where).with_columns(
            pl.col("timestamp").cast(pl.Int64).alias("visible_at")
        )
        self.item_rows()  # the items as this bundle serves (and indexed) them, shared
        view = copy.copy(self)
        history = self.transform.history
        if history is not None:
            view.transform = copy.copy(self.transform)
            ids = users if isinstance(users, pl.Series) else pl.Series(list(users))
            view.transform.history = history.with_user_events(
                new, self.transform.users.ids.cast(ids.rename("user_id"), where)
            )
        view._add_seen(new)
        return view

    def _unheld_events(self, events: Any, where: str) -> pl.DataFrame:
        """`events` validated as impressions (user_id, item_id, timestamp, click,
        purchase, rating), ids in the vocabularies' types, less those the bundle holds
        (same user, item, time and click; without an event log: clicks on seen pairs)."""
        from recsys_mtl.data.schema import validate_impressions

        frame = validate_impressions(events, where).select(
            "user_id", "item_id", "timestamp", "click", "purchase", "rating"
        )
        frame = frame.with_columns(
            self.transform.users.ids.cast(frame["user_id"], where),
            self.transform.items.ids.cast(frame["item_id"], where),
        ).unique(maintain_order=True)
        history = self.transform.history
        if history is not None:  # the same event (user, item, time, click) is not new
            keys = ["user_id", "item_id", "timestamp", "click"]
            held = history.events.select(keys)
        else:  # no event log: a click on a pair already seen is not new
            keys = ["user_id", "item_id", "click"]
            held = pl.DataFrame(
                {
                    "user_id": self.transform.users.ids.decode(self.seen_rows()),
                    "item_id": self.transform.items.ids.decode(self.seen_items),
                    "click": np.ones(self.seen_items.size, dtype=np.int8),
                }
            )
        return frame.join(
            held.unique().cast(frame.select(keys).schema), on=keys, how="anti", nulls_equal=True
        )

    def _add_seen(self, new: pl.DataFrame) -> None:
        """Add the clicked, known (user, item) pairs of `new` (user_idx, item_idx, click,
        visible_at) to the seen CSR; a pair already seen keeps its earlier time."""
        old = pl.DataFrame(
            {
                "user_idx": self.seen_rows().astype(np.int32),
                "item_idx": self.seen_items.astype(np.int32),
                "click": np.ones(self.seen_items.size, dtype=np.int8),
                "visible_at": self.seen_visible,
            }
        )
        both = pl.concat([old, new.select(old.columns)], how="vertical_relaxed")
        self.seen_indptr, self.seen_items, self.seen_visible = seen_csr(
            both.filter(pl.col("user_idx") >= FIRST), len(self.seen_indptr) - 1
        )
        self._popular = None

    @property
    def n_items(self) -> int:
        return self.transform.items.ids.size

    def item_rows(self) -> RowInputs:
        """Row features (history, recency) of every item index 0..n_items-1 from the
        serving state at its reference time; cached."""
        if self._item_rows is None:
            known = self.transform.items.ids.values
            ids = pl.concat([pl.Series([None] * FIRST, dtype=known.dtype), known])
            frame = self.transform.serving_rows(pl.DataFrame({"item_id": ids}), "item")
            self._item_rows = row_inputs(frame, self.transform.items.spec.rows, len(ids))
        return self._item_rows

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """(n_known_items, D + 1) float32; row r is the item with vocabulary index r + 2."""
        idx = torch.arange(FIRST, self.n_items)
        items = self.model.item_encoder(idx, self.item_rows().take(idx))
        return self.model.item_vectors(items).numpy().astype(np.float32)

    @torch.no_grad()
    def user_vectors(self, users: pl.Series | pl.DataFrame, where: str = "request") -> np.ndarray:
        """(U, D + 1) float32 retrieval vectors of raw user ids (unknown ids served from
        their side features and state, or as the unknown user). `users` is a Series of
        ids or a frame with `user_id` and optionally the request `timestamp` and context."""
        frame = users if isinstance(users, pl.DataFrame) else pl.DataFrame({"user_id": users})
        inputs = self._side_inputs("user", frame, where)
        encoded = self.model.user_encoder.encode(inputs)
        return self.model.user_vectors(encoded).numpy().astype(np.float32)

    def build_index(self, factory: str | None = None) -> ItemIndex:
        """Index the item vectors with `factory` (default `retrieval.index`; 'auto' picks
        by catalogue size) and the configured nprobe / efSearch where they apply."""
        index = ItemIndex.build(self.item_vectors(), factory or self.retrieval.index)
        self.index = index
        if self.configured_search_value():
            index.set_search_value(self.configured_search_value())
        return index

    def configured_search_value(self) -> int:
        """`retrieval.nprobe` or `retrieval.ef_search`, whichever the index uses; 0 when
        it is unset (to be tuned) or the index has no search parameter."""
        name = self.index.search_parameter if self.index is not None else None
        configured = {"nprobe": self.retrieval.nprobe, "efSearch": self.retrieval.ef_search}
        return configured.get(name or "", 0)

    # ------------------------------------------------------------------ inputs

    def _side_inputs(self, side_name: str, frame: pl.DataFrame, where: str) -> SideInputs:
        """Inputs for the raw ids in `frame[<side>_id]`. Table features: known ids from the
        model's buffers; ids unknown to the vocabulary but present in the side table get
        their own, and feature columns of `frame` override them for such ids. Row features
        from the serving state, at `frame`'s timestamp when it
        has one (else the state's reference time), with its context columns."""
        side = self.transform.side(side_name)
        encoder = self.model.user_encoder if side_name == "user" else self.model.item_encoder
        raw_ids = side.ids.cast(frame[side.spec.key], where)
        frame = frame.with_columns(raw_ids)
        idx = side.ids.encode(raw_ids, where).to_numpy().astype(np.int64)
        rows = row_inputs(self.transform.serving_rows(frame, side_name), side.spec.rows, len(idx))
        inputs = encoder.lookup(torch.from_numpy(idx), rows)
        cold = idx == UNKNOWN
        given = sorted({c.source for c in side.spec.table} & set(frame.columns))
        if cold.any() and (side.table is not None or given):
            cold_rows = frame.filter(pl.Series(cold)).select(side.spec.key, *given)
            if side.table is not None:
                # Features given in the request win over the bundle's side table.
                cold_rows = cold_rows.join(
                    side.table, on=side.spec.key, how="left", maintain_order="left", suffix="__t"
                )
                cold_rows = cold_rows.with_columns(
                    pl.coalesce(name, f"{name}__t").alias(name)
                    for name in given
                    if f"{name}__t" in cold_rows.columns
                ).drop([c for c in cold_rows.columns if c.endswith("__t")])
            arrays = side.encode_table(cold_rows)
            where_cold = torch.from_numpy(np.flatnonzero(cold))
            n_cat, n_num = arrays.categorical.shape[1], arrays.numeric.shape[1]
            inputs.categorical[where_cold, :n_cat] = torch.from_numpy(arrays.categorical)
            inputs.numeric[where_cold, :n_num] = torch.from_numpy(arrays.numeric)
            for name, values in arrays.lists.items():
                inputs.lists[name][where_cold] = torch.from_numpy(values)
        return inputs

    # ------------------------------------------------------------------ predict

    @torch.no_grad()
    def predict(self, frame: Any, where: str = "input") -> pl.DataFrame:
        """One row per input row (same order): p_<task> and <task>_pred columns."""
        frame = to_polars(frame, where)
        for column in ("user_id", "item_id"):
            if column not in frame.columns:
                raise RecsysError(
                    f"column '{column}' is missing",
                    where=where,
                    fix="give user_id and item_id for every row",
                )
        parts: list[dict[str, torch.Tensor]] = []
        for start in range(0, frame.height, 65536):
            chunk = frame.slice(start, 65536)
            users = self._side_inputs("user", chunk, where)
            items = self._side_inputs("item", chunk, where)
            parts.append(self.model.predictions(self.model.forward_inputs(users, items)))
        names = list(parts[0]) if parts else []
        return pl.DataFrame({n: torch.cat([p[n] for p in parts]).numpy() for n in names})

    def score_pairs(self, frame: Any, where: str = "input") -> pl.DataFrame:
        """`predict` with the request's user_id and item_id in front and `user_known` /
        `item_known` flags: ids the vocabularies do not hold are scored as unknown."""
        frame = to_polars(frame, where)
        scores = self.predict(frame, where)
        users = self.transform.users.ids
        items = self.transform.items.ids
        known = pl.DataFrame(
            {
                "user_known": users.encode(users.cast(frame["user_id"], where)) >= FIRST,
                "item_known": items.encode(items.cast(frame["item_id"], where)) >= FIRST,
            }
        )
        unknown_items = frame["item_id"].filter(~known["item_known"]).unique()
        if unknown_items.len():
            LOGGER.warning(
                "%s: %d unknown item ids scored as unknown (e.g. %s)",
                where,
                unknown_items.len(),
                unknown_items.head(5).to_list(),
            )
        return pl.concat([frame.select("user_id", "item_id"), known, scores], how="horizontal")

    # ------------------------------------------------------------------ recommend

    def popular_items(self) -> tuple[np.ndarray, np.ndarray]:
        """Item rows (0-based, index order) by training clicks, most clicked first (ties by
        lower row), and each one's share of all training clicks; cached."""
        if self._popular is None:
            counts = np.bincount(self.seen_items - FIRST, minlength=self.n_items - FIRST)
            order = np.lexsort((np.arange(counts.size), -counts))
            share = counts[order] / max(int(counts.sum()), 1)
            self._popular = (order.astype(np.int64), share.astype(np.float32))
        return self._popular

    @torch.no_grad()
    def recommend(
        self,
        user_ids: Any,
        k: int = 10,
        fusion: Mapping[str, float] | None = None,
        *,
        fusion_mode: str | None = None,
        exclude_seen: bool = True,
        exclude_items: Sequence[Any] | pl.Series | None = None,
        where: str = "request",
    ) -> pl.DataFrame:
        """Top-k items per user, best first.

        Candidates: the FAISS index's best `retrieval.candidates` items by click score for
        known users and for unknown users with side features (from the bundle's side
        table or given as columns of `user_ids`); the most popular items for unknown users
        without features. Excluded: items the user clicked in training (`exclude_seen`),
        `exclude_items` (raw ids, for every user) and a per-user `exclude_items` list
        column of `user_ids`; unknown item ids there are ignored and logged. All heads
        then score the candidates and the fusion rule (`retrieval.fusion_mode`,
        `retrieval.fusion` updated by `fusion`) orders them; popularity users keep the
        popularity order.

        `user_ids`: raw ids (list/Series) or a frame with `user_id` and optionally
        `timestamp`, context and user feature columns, `exclude_items`.
        Returns user_id, rank (1..k), item_id, score (the fused score, or the item's share
        of training clicks for popularity users), source ('model', 'side_features' or
        'popularity') and each head's prediction.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise RecsysError(f"k must be positive, got {k!r}", where=where, fix="ask for k >= 1")
        if self.index is None:
            raise RecsysError(
                "this model has no index",
                where=where,
                fix="run `recsys-mtl index PIPELINE.toml` first",
            )
        requests = self._requests(user_ids, where)
        mode = fusion_mode or self.retrieval.fusion_mode
        kinds = {name: task.kind for name, task in self.model.tasks.items()}
        weights = check_fusion({**self.retrieval.fusion, **(fusion or {})}, mode, kinds, where)
        shared = self._encode_items(exclude_items, f"{where} exclude_items")
        n_candidates = min(max(int(k), self.retrieval.candidates), self.index.n_items)
        frames = [
            self._recommend_chunk(
                requests.slice(s, CHUNK_USERS),
                int(k),
                n_candidates,
                weights,
                mode,
                exclude_seen,
                shared,
                where,
            )
            for s in range(0, max(requests.height, 1), CHUNK_USERS)
        ]
        return pl.concat(frames)

    def recommend_to_parquet(
        self,
        path: Path | str,
        user_ids: Any = None,
        k: int = 100,
        *,
        chunk_users: int = 8192,
        progress: bool = True,
        **options: Any,
    ) -> int:
        """Batch retrieval: the top-k of every user in `user_ids` (default: every user
        the model knows) written to one Parquet file, `chunk_users` users at a time, so
        memory stays bounded by the chunk whatever the number of users. The file is
        written under a temporary name and renamed when complete. `options` go to
        `recommend` (fusion, fusion_mode, exclude_seen, exclude_items). Returns rows."""
        import pyarrow.parquet as pq
        from tqdm.auto import tqdm

        if chunk_users <= 0:
            raise RecsysError(
                f"chunk_users must be positive, got {chunk_users}",
                where="recommend_to_parquet",
                fix="use e.g. 8192",
            )
        requests = (
            pl.DataFrame({"user_id": self.transform.users.ids.values})
            if user_ids is None
            else self._requests(user_ids, "users")
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = 0
        with (
            atomic_path(path) as tmp,
            tqdm(
                total=requests.height, unit="user", desc="recommend", disable=not progress or None
            ) as bar,
        ):
            writer: pq.ParquetWriter | None = None
            try:
                for start in range(0, max(requests.height, 1), chunk_users):
                    chunk = self.recommend(
                        requests.slice(start, chunk_users), k, where="users", **options
                    ).to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, chunk.schema)
                    writer.write_table(chunk)
                    rows += chunk.num_rows
                    bar.update(min(chunk_users, requests.height - start))
            finally:
                if writer is not None:
                    writer.close()
        return rows

    def _requests(self, user_ids: Any, where: str) -> pl.DataFrame:
        """The request as a frame with a `user_id` column in the vocabulary's dtype."""
        if isinstance(user_ids, pl.DataFrame | pd.DataFrame):
            frame = to_polars(user_ids, where)
            if "user_id" not in frame.columns:
                raise RecsysError(
                    f"the request has no user_id column (columns: {frame.columns})",
                    where=where,
                    fix="send one row per user with a user_id column",
                )
        else:
            users = user_ids if isinstance(user_ids, pl.Series) else pl.Series(list(user_ids))
            frame = pl.DataFrame({"user_id": users.rename("user_id")})
        return frame.with_columns(self.transform.users.ids.cast(frame["user_id"], where))

    def _encode_items(self, raw_ids: Any, where: str) -> np.ndarray:
        """Item rows (0-based) of raw item ids; unknown ids are dropped and logged."""
        if raw_ids is None:
            return np.zeros(0, dtype=np.int64)
        values = raw_ids if isinstance(raw_ids, pl.Series) else pl.Series(list(raw_ids))
        if values.len() == 0:
            return np.zeros(0, dtype=np.int64)
        vocab = self.transform.items.ids
        idx = vocab.encode(vocab.cast(values.rename("item_id"), where), where).to_numpy()
        known = idx >= FIRST
        if not known.all():
            unknown = values.filter(pl.Series(~known)).unique(maintain_order=True)
            LOGGER.warning(
                "%s: %d unknown item ids ignored (e.g. %s)",
                where,
                unknown.len(),
                unknown.head(5).to_list(),
            )
        return idx[known].astype(np.int64) - FIRST

    def _exclusions(
        self,
        requests: pl.DataFrame,
        user_idx: np.ndarray,
        exclude_seen: bool,
        shared: np.ndarray,
        where: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-user excluded item rows as CSR (seen items, shared and per-user lists)."""
        n_users = len(user_idx)
        pieces_rows: list[np.ndarray] = []
        pieces_items: list[np.ndarray] = []
        if exclude_seen:
            indptr, seen = self.seen_before(user_idx, read_times(requests))
            pieces_rows.append(np.repeat(np.arange(n_users), np.diff(indptr)))
            pieces_items.append(seen - FIRST)
        if shared.size:
            pieces_rows.append(np.repeat(np.arange(n_users), shared.size))
            pieces_items.append(np.tile(shared, n_users))
        if "exclude_items" in requests.columns:
            column = requests["exclude_items"]
            if not isinstance(column.dtype, pl.List | pl.Array):
                raise RecsysError(
                    f"exclude_items must hold a list of item ids per user, got {column.dtype}",
                    where=where,
                    fix='send e.g. {"user_id": 7, "exclude_items": [3, 19]}',
                )
            exploded = (
                pl.DataFrame({"row": np.arange(n_users), "item_id": column})
                .explode("item_id")
                .drop_nulls("item_id")
            )
            vocab = self.transform.items.ids
            idx = vocab.encode(
                vocab.cast(exploded["item_id"], f"{where} exclude_items"), where
            ).to_numpy()
            known = idx >= FIRST
            if not known.all():
                LOGGER.warning(
                    "%s exclude_items: %d unknown item ids ignored (e.g. %s)",
                    where,
                    int((~known).sum()),
                    exploded["item_id"].filter(pl.Series(~known)).head(5).to_list(),
                )
            pieces_rows.append(exploded["row"].to_numpy()[known])
            pieces_items.append(idx[known].astype(np.int64) - FIRST)
        if not pieces_rows:
            return np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.concatenate(pieces_rows).astype(np.int64)
        items = np.concatenate(pieces_items).astype(np.int64)
        # Unique (user, item) pairs in row order: sort by the pair key.
        keys = np.unique(rows * self.n_items + items)
        rows, items = keys // self.n_items, keys % self.n_items
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_users))])
        return indptr.astype(np.int64), items

    def _popular_candidates(
        self, n_users: int, n_candidates: int, indptr: np.ndarray, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n_users, n_candidates) item rows in popularity order minus each user's
        exclusions (-1 pads), and their popularity shares."""
        order, share = self.popular_items()
        candidates = ordered_topk(order, n_users, n_candidates, indptr, excluded)
        share_by_item = np.zeros(order.size + 1, dtype=np.float32)
        share_by_item[order] = share
        return candidates, share_by_item[candidates]  # -1 reads the trailing 0

    def _recommend_chunk(
        self,
        requests: pl.DataFrame,
        k: int,
        n_candidates: int,
        weights: dict[str, float],
        mode: str,
        exclude_seen: bool,
        shared: np.ndarray,
        where: str,
    ) -> pl.DataFrame:
        model = self.model
        inputs, source = self._user_inputs(requests, where)
        encoded_users = model.user_encoder.encode(inputs)
        user_vectors = model.user_vectors(encoded_users).numpy().astype(np.float32)
        n_users = requests.height
        indptr, excluded = self._exclusions(
            requests, inputs.ids.numpy(), exclude_seen, shared, where
        )
        assert self.index is not None
        candidates = np.full((n_users, n_candidates), -1, dtype=np.int64)
        popularity = source == SOURCES.index(SOURCE_POPULARITY)
        by_index = np.flatnonzero(~popularity)
        if by_index.size:
            sub_indptr, sub_excluded = csr_rows(indptr, excluded, by_index)
            _, found = self.index.search(
                user_vectors[by_index], n_candidates, sub_indptr, sub_excluded
            )
            candidates[by_index] = found
        shares = np.zeros((n_users, n_candidates), dtype=np.float32)
        by_popularity = np.flatnonzero(popularity)
        if by_popularity.size:
            sub_indptr, sub_excluded = csr_rows(indptr, excluded, by_popularity)
            found, found_shares = self._popular_candidates(
                by_popularity.size, n_candidates, sub_indptr, sub_excluded
            )
            candidates[by_popularity], shares[by_popularity] = found, found_shares
        valid = torch.from_numpy(candidates >= 0)
        item_idx = torch.from_numpy(np.where(candidates >= 0, candidates + FIRST, UNKNOWN))
        pair_users = encoded_users.repeat_interleave(n_candidates, dim=0)
        flat_idx = item_idx.reshape(-1)
        pair_items = model.item_encoder(flat_idx, self.item_rows().take(flat_idx))
        predictions = {
            name: values.reshape(n_users, n_candidates)
            for name, values in model.predictions(
                model.forward_encoded(pair_users, pair_items)
            ).items()
        }
        head_scores = {
            name: self._head_score(name, task, predictions) for name, task in model.tasks.items()
        }
        key = fuse(head_scores, weights, mode)
        score = fused_score(key, mode)
        if by_popularity.size:
            rows = torch.from_numpy(by_popularity)
            # Popularity order: the candidates are already sorted, so rank by position.
            key[rows] = -torch.arange(n_candidates, dtype=key.dtype).expand(len(rows), -1)
            score[rows] = torch.from_numpy(shares[by_popularity])
        key[~valid] = float("-inf")
        top_key, top_pos = torch.topk(key, min(k, n_candidates), dim=1)
        keep = torch.isfinite(top_key).reshape(-1).numpy()
        width = top_pos.shape[1]
        rows_out = np.repeat(np.arange(n_users), width)[keep]
        chosen = top_pos.reshape(-1).numpy()[keep]
        flat_items = item_idx.numpy()[rows_out, chosen]
        out = {
            "user_id": requests["user_id"].gather(rows_out),
            "rank": (np.tile(np.arange(1, width + 1), n_users)[keep]).astype(np.int32),
            "item_id": self.transform.items.ids.decode(flat_items),
            "score": score.numpy()[rows_out, chosen],
            "source": pl.Series(SOURCES, dtype=pl.Utf8).gather(source[rows_out]),
        }
        for name, values in predictions.items():
            out[name] = values.numpy()[rows_out, chosen]
        return pl.DataFrame(out)

    def _head_score(
        self, name: str, task: TaskConfig, predictions: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """A head's fusion score: p_<task>, or the prediction / regression_max (about
        [0, 1]; not clipped, so predictions past the scale keep their order)."""
        value = predictions[output_column(name, task)]
        return value if task.kind == "binary" else value / self.retrieval.regression_max

    def _user_inputs(self, requests: pl.DataFrame, where: str) -> tuple[SideInputs, np.ndarray]:
        """The users' model inputs and where their candidates come from (an index into
        SOURCES per user): known users and unknown ones with side features go to the
        index, unknown ones without features to popularity."""
        inputs = self._side_inputs("user", requests, where)
        cold = inputs.ids.numpy() == UNKNOWN
        source = np.zeros(requests.height, dtype=np.int64)
        if cold.any():
            featured = self._has_side_features("user", requests)
            source[cold & featured] = SOURCES.index(SOURCE_SIDE_FEATURES)
            source[cold & ~featured] = SOURCES.index(SOURCE_POPULARITY)
        return inputs, source

    def _has_side_features(self, side_name: str, frame: pl.DataFrame) -> np.ndarray:
        """(rows,) bool: the id is in the bundle's side table or the frame gives a value
        for at least one of its table features."""
        side = self.transform.side(side_name)
        given = np.zeros(frame.height, dtype=bool)
        if side.table is not None:
            given |= frame[side.spec.key].is_in(side.table[side.spec.key].implode()).to_numpy()
        for column in {c.source for c in side.spec.table} & set(frame.columns):
            given |= frame[column].is_not_null().to_numpy()
        return given

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        """Write the bundle atomically: a failed save leaves any earlier bundle intact."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            torch.save(self.model.state_dict(), tmp / "model.pt")
            metadata = model_metadata(self.model_cfg, self.model.tasks)
            metadata["retrieval"] = asdict(self.retrieval)
            (tmp / "model.json").write_text(json.dumps(metadata, indent=2))
            self.transform.save(tmp / "transform")
            np.savez(
                tmp / "seen.npz",
                indptr=self.seen_indptr,
                items=self.seen_items,
                visible_at=self.seen_visible,
            )
            if self.index is not None:
                self.index.save(tmp / "index.faiss")
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {
                "format_version": FORMAT_VERSION,
                "versions": _versions(),
                "files": {str(p.relative_to(tmp)): _sha256(p) for p in files},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            replace_folder(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> Recommender:
        """Load a bundle, verifying the manifest's hashes; never unpickles objects."""
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise RecsysError(
                f"'{folder}' is not a recommender bundle (no manifest.json)",
                fix="pass the model folder written by `recsys-mtl train`",
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RecsysError(
                f"bundle format {manifest.get('format_version')} is not {FORMAT_VERSION}",
                where=str(folder),
                fix="retrain the model with this version of recsys-mtl",
            )
        for name, digest in manifest["files"].items():
            path = folder / name
            if not path.is_file() or _sha256(path) != digest:
                raise RecsysError(
                    f"bundle file '{name}' is missing or corrupted",
                    where=str(folder),
                    fix="retrain or re-download the model",
                )
        metadata = read_bundle_metadata(folder)
        transform = FeatureTransform.load(folder / "transform")
        model = model_from_metadata(transform, metadata)
        try:
            weights = torch.load(folder / "model.pt", weights_only=True)
        except pickle.UnpicklingError:
            raise RecsysError(
                "bundle file 'model.pt' holds objects that are not plain tensors; it is "
                "refused (unpickling them could run code)",
                where=str(folder),
                fix="use a bundle written by `recsys-mtl train`, or retrain the model",
            ) from None
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:  # parameter names or shapes of another version
            raise RecsysError(
                f"the model weights do not fit this version's architecture: "
                f"{str(exc).splitlines()[0]}",
                where=str(folder),
                fix="retrain the model with this version of recsys-mtl",
            ) from None
        seen = np.load(folder / "seen.npz", allow_pickle=False)
        index = (
            ItemIndex.load(folder / "index.faiss") if (folder / "index.faiss").is_file() else None
        )
        return cls(
            model,
            transform,
            seen["indptr"],
            seen["items"],
            RetrievalSection(**metadata["retrieval"]),
            ModelSection(**metadata["model"]),
            index,
            seen["visible_at"],
        )


def seen_csr(interactions: pl.DataFrame, n_users: int) -> tuple[np.ndarray, ...]:
    """(indptr (n_users + 1,), items, visible_at) of the clicked, known (user_idx,
    item_idx) pairs of `interactions`, each pair once at its earliest visible_at (rows
    without the column are visible from the start); sorted by user, then time."""
    when = (
        pl.col("visible_at").cast(pl.Int64)
        if "visible_at" in interactions.columns
        else pl.lit(np.iinfo(np.int64).min, pl.Int64)
    )
    positives = (
        interactions.filter((pl.col("click") == 1) & (pl.col("item_idx") >= FIRST))
        .group_by("user_idx", "item_idx")
        .agg(when.min().alias("visible_at"))
        .sort("user_idx", "visible_at", "item_idx")
    )
    counts = np.bincount(positives["user_idx"].to_numpy(), minlength=n_users)
    return (
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        positives["item_idx"].to_numpy().astype(np.int64),
        positives["visible_at"].to_numpy().astype(np.int64),
    )


def read_bundle_metadata(folder: Path) -> dict[str, Any]:
    """The bundle's model.json: architecture, tasks and retrieval settings."""
    return json.loads((Path(folder) / "model.json").read_text())


def _versions() -> dict[str, str]:
    from recsys_mtl import __version__
    from recsys_mtl.retrieval import faiss_version

    return {
        "recsys_mtl": __version__,
        "torch": torch.__version__,
        "polars": pl.__version__,
        "faiss": faiss_version(),
        "numpy": np.__version__,
    }
