"""History features: what was known about a user or item before each row.

Every history feature (aggregates, recency, recent items, recent ratings) is read from
an `EventState` (features/state.py) *as of* the row's time, under the pipeline's
declared freshness (`features.freshness`): a row at time t sees the events whose
`visible_at` is earlier than t. Training features follow one more rule, so that model
selection stays clean: a row of split s only sees events of split s or an earlier one
(a training row never sees a validation or test event, whatever the split kind). Test
rows see every split, which is exactly what the exported bundle, holding every event
it was given, reads for the same rows.

`HistoryTransform` turns the raw aggregates into model inputs with one set of fitted
statistics and holds the serving state (all events, with their visible_at).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recsys_mtl.atomic import write_json_atomic
from recsys_mtl.features.columns import ColumnSpec
from recsys_mtl.features.state import (
    AGGREGATES,
    EVENT_COLUMNS,
    RECENT_RATED,
    RECENT_RATING_SUM,
    EventState,
)
from recsys_mtl.features.temporal import RECENCY_SIZE, recency_index
from recsys_mtl.features.vocab import write_parquet_atomic

N_SPLITS = 3
#: History features; impressions and click rate only where negatives are real.
STATS = ("impressions", "clicks", "click_rate", "purchase_rate", "mean_rating")
POSITIVE_ONLY_STATS = ("clicks", "purchase_rate", "mean_rating")
RECENT_ITEMS = "recent_items"
LABEL_COLUMNS = ("click", "purchase", "rating")

__all__ = [
    "AGGREGATES",
    "RECENT_ITEMS",
    "RECENT_RATED",
    "RECENT_RATING_SUM",
    "HistorySpec",
    "HistoryTransform",
]


@dataclass
class HistorySpec:
    """Fitted settings: which stats, the smoothing prior, global means and scalers."""

    positive_only: bool
    aggregates: bool
    prior: float
    recent_items: int
    recency: bool
    global_click_rate: float = 0.0
    global_purchase_rate: float = 0.0
    global_rating: float = 0.0
    reference_time: int = 0
    recent_ratings: int = 0
    item_features: bool = True
    freshness: str = "snapshot"
    scalers: dict[str, list[float]] = field(default_factory=dict)  # name -> [mean, std]

    @property
    def stats(self) -> tuple[str, ...]:
        if not self.aggregates:
            return ()
        return POSITIVE_ONLY_STATS if self.positive_only else STATS


class HistoryTransform:
    """Turns raw aggregates into standardised features; holds the serving state: every
    event the model was given (`events`, EVENT_COLUMNS), read as of each request."""

    def __init__(self, spec: HistorySpec, events: pl.DataFrame) -> None:
        self.spec = spec
        self.events = events.select([c for c in EVENT_COLUMNS if c in events.columns])
        self._states: dict[str, EventState] = {}

    def state(self, prefix: str) -> EventState:
        """The serving state of `prefix` ('user' or 'item'), built on first use."""
        if prefix not in self._states:
            self._states[prefix] = EventState(self.events, f"{prefix}_id")
        return self._states[prefix]

    def add_events(self, new: pl.DataFrame) -> None:
        """Append events (EVENT_COLUMNS) to the serving state; reads rebuild on next use."""
        new = new.select(self.events.columns).cast(self.events.schema)
        self.events = pl.concat([self.events, new])
        self.spec.reference_time = max(self.spec.reference_time, int(new["timestamp"].max()))
        self._states.clear()

    def with_user_events(self, new: pl.DataFrame, users: pl.Series) -> HistoryTransform:
        """A view that also holds `new` (EVENT_COLUMNS) for the user-side reads of
        `users` (which must include every user of `new`): its user state holds only
        these users' events, so building it costs one scan of the events, not a sort of
        them all; item-side reads stay on this transform's state (a request's events
        update its own user's history; item statistics move with `observe`). Nothing
        here changes."""
        wanted = pl.concat([users.cast(self.events.schema["user_id"]), new["user_id"]]).unique()
        mine = self.events.filter(pl.col("user_id").is_in(wanted.implode()))
        added = new.select(self.events.columns).cast(self.events.schema)
        view = HistoryTransform(copy.copy(self.spec), pl.concat([mine, added]))
        view._states["item"] = self.state("item")
        if added.height:
            view.spec.reference_time = max(self.spec.reference_time, int(added["timestamp"].max()))
        return view

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        train_events: pl.DataFrame,
        state_events: pl.DataFrame,
        positive_only: bool,
        aggregates: bool,
        prior: float,
        n_recent: int,
        recency: bool,
        n_recent_ratings: int = 0,
        item_features: bool = True,
        freshness: str = "snapshot",
    ) -> HistoryTransform:
        """Global means from training events; the serving state is `state_events`
        (every event given, with item_idx and visible_at)."""
        clicks = float(train_events["click"].sum())
        purchases = float((train_events["purchase"] == 1).sum())
        ratings = train_events["rating"].drop_nulls()
        spec = HistorySpec(
            positive_only=positive_only,
            aggregates=aggregates,
            prior=prior,
            recent_items=n_recent,
            recency=recency,
            global_click_rate=clicks / max(train_events.height, 1),
            global_purchase_rate=purchases / max(clicks, 1.0),
            global_rating=float(ratings.mean()) if ratings.len() else 0.0,
            reference_time=int(state_events["timestamp"].max() or 0),
            recent_ratings=n_recent_ratings,
            item_features=item_features,
            freshness=freshness,
        )
        return cls(spec, state_events)

    def fit_scalers(self, raw_user: pl.DataFrame, raw_item: pl.DataFrame | None) -> None:
        """Mean/std of every feature over the training rows' raw aggregates."""
        for prefix, raw in (("user", raw_user), ("item", raw_item)):
            if raw is None:
                continue
            values = raw.select(self._values(prefix))
            for name in values.columns:
                column = values[name]
                std = float(column.std() or 0.0)
                self.spec.scalers[name] = [float(column.mean() or 0.0), std if std > 1e-12 else 1.0]

    # ------------------------------------------------------------------ features

    def columns(self, prefix: str) -> list[ColumnSpec]:
        """Model inputs this transform adds to the `prefix` ('user' or 'item') side."""
        out = [ColumnSpec(f"{prefix}_{stat}", "numeric") for stat in self._stats(prefix)]
        if self.spec.recency and self._has_side(prefix):
            out.append(ColumnSpec(f"{prefix}_recency", "categorical", size=RECENCY_SIZE))
        return out

    def _has_side(self, prefix: str) -> bool:
        return prefix == "user" or self.spec.item_features

    def _stats(self, prefix: str) -> tuple[str, ...]:
        if not self._has_side(prefix):
            return ()
        extra = ("recent_rating",) if prefix == "user" and self.spec.recent_ratings else ()
        return self.spec.stats + extra

    def _values(self, prefix: str) -> list[pl.Expr]:
        s, k = self.spec, self.spec.prior
        n, clicks = pl.col("n").cast(pl.Float64), pl.col("clicks").cast(pl.Float64)
        exprs = {
            "impressions": n.log1p(),
            "clicks": clicks.log1p(),
            "click_rate": (clicks + k * s.global_click_rate) / (n + k),
            "purchase_rate": (pl.col("purchases") + k * s.global_purchase_rate) / (clicks + k),
            "mean_rating": (pl.col("rating_sum") + k * s.global_rating) / (pl.col("rated") + k),
            # one pseudo-rating at the training mean: a window of a few ratings is the point
            "recent_rating": (pl.col(RECENT_RATING_SUM) + s.global_rating)
            / (pl.col(RECENT_RATED) + 1.0),
        }
        return [exprs[stat].alias(f"{prefix}_{stat}") for stat in self._stats(prefix)]

    def features(self, raw: pl.DataFrame, prefix: str, timestamp: pl.Expr) -> pl.DataFrame:
        """Encoded features of `prefix` from raw aggregates (n, clicks, purchases, rated,
        rating_sum, last_time) and the rows' timestamps."""
        values = [
            (
                (e - self.spec.scalers[e.meta.output_name()][0])
                / self.spec.scalers[e.meta.output_name()][1]
            ).cast(pl.Float32)
            for e in self._values(prefix)
        ]
        if self.spec.recency and self._has_side(prefix):
            values.append(recency_index(timestamp, pl.col("last_time")).alias(f"{prefix}_recency"))
        return raw.select(values)

    def read(
        self,
        state: EventState,
        ids: pl.Series,
        prefix: str,
        times: np.ndarray | None,
    ) -> tuple[pl.DataFrame, np.ndarray | None]:
        """Raw aggregates (with recent ratings on the user side) of `ids` read from
        `state` as of `times` (None: the latest state), and the (R, N) recent items on
        the user side when the spec has them (else None)."""
        lo, hi = state.bounds(ids, times)
        raw = state.aggregates(lo, hi)
        recent = None
        if prefix == "user":
            if self.spec.recent_ratings:
                raw = pl.concat(
                    [raw, state.recent_ratings(lo, hi, self.spec.recent_ratings)],
                    how="horizontal",
                )
            if self.spec.recent_items:
                recent = state.recent_items(lo, hi, self.spec.recent_items)
        return raw, recent

    def serving_read(
        self, ids: pl.Series, prefix: str, times: np.ndarray | None
    ) -> tuple[pl.DataFrame, np.ndarray | None]:
        """`read` from the serving state (every event the bundle holds)."""
        return self.read(self.state(prefix), ids, prefix, times)

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(self.events, folder / "events.parquet")
        write_json_atomic(asdict(self.spec), folder / "spec.json")

    @classmethod
    def load(cls, folder: Path) -> HistoryTransform:
        spec = HistorySpec(**json.loads((folder / "spec.json").read_text()))
        return cls(spec, pl.read_parquet(folder / "events.parquet"))
