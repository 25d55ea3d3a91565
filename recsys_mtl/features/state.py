"""The history state: every event a model was given, read *as of* a time.

Each event carries `visible_at`, the time from which it belongs to the state that reads
see (`features.freshness`): a read at time t sees exactly the events with
visible_at < t. Training rows, validation and test rows, `predict`, `recommend` and
`evaluate --model --input` all read history through `EventState`, so a feature is
computed for a training row exactly as the exported bundle computes it for a request.

- `online`: visible_at = the event's own timestamp (the state is updated as events
  arrive; a row sees every strictly earlier event).
- `snapshot`: the state is published in blocks. A user's training events are cut into
  consecutive blocks of `snapshot_fraction` of the user's events, and an event becomes
  visible at the time of the last event of its block; the validation events form one
  block and the test events another. A validation or test row therefore sees the
  state at the end of the training period, exactly as the exported bundle serves a
  later request, and a training row sees history as stale as a served row's: between 0
  and one block behind. With `snapshot_every` (seconds) the training blocks are windows
  of time instead, the same for every user, ending at the end of the training period:
  the state a bundle retrained on that cadence would have served.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys_mtl.features.lookup import KeyPositions

FRESHNESS = ("snapshot", "online")
EVENT_COLUMNS = ("user_id", "item_id", "item_idx", "timestamp", "visible_at",
                 "click", "purchase", "rating")  # fmt: skip
#: Raw per-key aggregates, summed over the visible events.
AGGREGATES = ("n", "clicks", "purchases", "rated", "rating_sum")
RECENT_RATING_SUM, RECENT_RATED = "recent_rating_sum", "recent_rated"
#: A read time later than any event: what a request without a timestamp reads as of.
LATEST = np.iinfo(np.int64).max // 4


def read_times(frame: pl.DataFrame) -> np.ndarray | None:
    """(R,) int64 epoch seconds of `frame`'s `timestamp` column (datetimes converted; a
    null reads the latest state), or None when the frame has no timestamp (every read
    is the latest)."""
    if "timestamp" not in frame.columns:
        return None
    stamps = frame["timestamp"]
    if isinstance(stamps.dtype, pl.Datetime | pl.Date):
        stamps = stamps.dt.epoch("s")
    return stamps.cast(pl.Int64).fill_null(LATEST).to_numpy()


def visible_at(
    events: pl.DataFrame, freshness: str, snapshot_fraction: float, snapshot_every: int = 0
) -> np.ndarray:
    """(N,) int64: when each event of `events` (user_id, timestamp, split) enters the
    state (see the module docstring). Ties in time keep input order."""
    if freshness not in FRESHNESS:
        raise ValueError(f"unknown freshness {freshness!r}; use one of {', '.join(FRESHNESS)}")
    time = events["timestamp"].cast(pl.Int64).to_numpy()
    n = time.size
    if freshness == "online" or n == 0:
        return time.astype(np.int64)
    order = (
        events.select("user_id", "split", "timestamp")
        .with_row_index("__row__")
        .select(pl.arg_sort_by("user_id", "split", "timestamp", "__row__"))
        .to_series()
        .to_numpy()
    )
    users = events["user_id"].gather(order)
    split = events["split"].to_numpy()[order]
    index = np.arange(n)
    new_user = np.ones(n, dtype=bool)
    if n > 1:
        new_user[1:] = users.slice(1).ne_missing(users.slice(0, n - 1)).to_numpy()
    new_part = new_user.copy()
    new_part[1:] |= split[1:] != split[:-1]
    part_start = np.maximum.accumulate(np.where(new_part, index, 0))
    user_events = np.diff(np.append(np.flatnonzero(new_user), n))
    per_user = np.repeat(user_events, user_events)  # (N,) the row's user's event count
    block = np.maximum(1, np.floor(per_user * snapshot_fraction + 1e-9)).astype(np.int64)
    rank = index - part_start
    # training events (split 0) in blocks; every other split is one block
    block_id = np.where(split == 0, rank // block, 0)
    new_block = new_part.copy()
    new_block[1:] |= block_id[1:] != block_id[:-1]
    run = np.cumsum(new_block) - 1
    last = np.append(np.flatnonzero(new_block)[1:] - 1, n - 1)
    sorted_time = time[order]
    out = np.empty(n, dtype=np.int64)
    out[order] = sorted_time[last][run]
    training = events["split"].to_numpy() == 0
    if snapshot_every > 0 and training.any():
        end = int(time[training].max())
        windows_back = (end - time[training]) // snapshot_every
        out[training] = end - windows_back * snapshot_every
    return out


class EventState:
    """One side's events (`key` is 'user_id' or 'item_id'), sorted by (key, visible_at,
    timestamp), answering reads at given times in O(log n) per row, vectorised.

    events: the key, timestamp, visible_at, click, purchase, rating and (for recent
    items) item_idx; only real events, never sampled negatives.
    """

    def __init__(self, events: pl.DataFrame, key: str) -> None:
        self.key = key
        order = events.select(
            pl.arg_sort_by(key, "visible_at", "timestamp", maintain_order=True)
        ).to_series()
        rows = events.select(
            key,
            pl.col("timestamp").cast(pl.Int64),
            pl.col("visible_at").cast(pl.Int64),
            pl.col("click").cast(pl.Int64),
            (pl.col("purchase") == 1).fill_null(False).cast(pl.Int64).alias("purchases"),
            pl.col("rating").cast(pl.Float64),
            *([pl.col("item_idx").cast(pl.Int32)] if "item_idx" in events.columns else []),
        )[order]
        n = rows.height
        self.size = n
        keys = rows[key]
        new_key = np.ones(n, dtype=bool)
        if n > 1:
            new_key[1:] = keys.slice(1).ne_missing(keys.slice(0, n - 1)).to_numpy()
        starts = np.flatnonzero(new_key)
        self.keys = keys.gather(starts).rechunk()
        self._positions = KeyPositions(self.keys)
        self._starts = np.append(starts, n).astype(np.int64)
        event_key = (np.cumsum(new_key) - 1).astype(np.int64)
        visible = rows["visible_at"].to_numpy()
        time = rows["timestamp"].to_numpy()
        self._t0 = int(visible.min()) if n else 0
        self._width = (int(visible.max()) - self._t0 + 2) if n else 2
        self._composite = event_key * self._width + (visible - self._t0)
        rated = rows["rating"].is_not_null().to_numpy()
        columns = {
            "n": np.ones(n, dtype=np.int64),
            "clicks": rows["click"].to_numpy(),
            "purchases": rows["purchases"].to_numpy(),
            "rated": rated.astype(np.int64),
            "rating_sum": rows["rating"].fill_null(0.0).to_numpy(),
        }
        self._prefix = {name: _prefix(values) for name, values in columns.items()}
        # latest timestamp among each key's first j events: a per-key running maximum
        t_min = int(time.min()) if n else 0
        span = (int(time.max()) - t_min + 1) if n else 1
        running = np.maximum.accumulate(event_key * span + (time - t_min)) if n else time
        self._last_time = running - event_key * span + t_min
        clicked = columns["clicks"] == 1
        self._clicked_items = (
            rows["item_idx"].to_numpy()[clicked].astype(np.int32)
            if "item_idx" in rows.columns
            else np.zeros(0, dtype=np.int32)
        )
        self._ratings = rows["rating"].to_numpy()[rated].astype(np.float32)

    @property
    def reference_time(self) -> int:
        """The latest event time the state holds (0 when empty)."""
        return int(self._last_time.max()) if self.size else 0

    def bounds(self, ids: pl.Series, times: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) int64 per read: the key's visible events are sorted positions
        lo..hi-1. `times` (R,) int64, or None for the latest state (everything held);
        a null id or one the state does not hold has lo == hi."""
        cast = ids.cast(self.keys.dtype, strict=False) if self.keys.len() else ids
        found = self._positions.positions(cast)
        known = found.is_not_null().to_numpy()
        position = found.fill_null(0).to_numpy().astype(np.int64)
        lo = np.where(known, self._starts[position], 0)
        end = np.where(known, self._starts[np.minimum(position + 1, len(self._starts) - 1)], 0)
        if times is None or self.size == 0:
            return lo, end
        offset = np.clip(np.asarray(times, dtype=np.int64) - self._t0, 0, self._width - 1)
        hi = np.searchsorted(self._composite, position * self._width + offset, side="left")
        return lo, np.where(known, np.minimum(hi, end), 0).astype(np.int64)

    def aggregates(self, lo: np.ndarray, hi: np.ndarray) -> pl.DataFrame:
        """Raw aggregates of the reads: n, clicks, purchases, rated (Int32), rating_sum
        (Float32) and last_time (Int64, null when nothing is visible)."""
        out: dict[str, pl.Series] = {}
        for name in AGGREGATES:
            values = self._prefix[name][hi] - self._prefix[name][lo]
            dtype = pl.Float32 if name == "rating_sum" else pl.Int32
            out[name] = pl.Series(name, values, dtype=dtype)
        any_visible = hi > lo
        last = np.where(any_visible, self._last_time[np.maximum(hi - 1, 0)] if self.size else 0, 0)
        out["last_time"] = pl.Series("last_time", last, dtype=pl.Int64).set(
            pl.Series(~any_visible), None
        )
        return pl.DataFrame(out)

    def recent_items(self, lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
        """(R, n) int32 item indices of the last n visible clicks, oldest first and
        right-aligned (0, the padding index, on the left)."""
        return _last(self._clicked_items, self._prefix["clicks"], lo, hi, n)

    def recent_ratings(self, lo: np.ndarray, hi: np.ndarray, n: int) -> pl.DataFrame:
        """Sum and count of the last n visible ratings: recent_rating_sum, recent_rated."""
        last = _last(self._ratings, self._prefix["rated"], lo, hi, n)
        count = np.minimum(self._prefix["rated"][hi] - self._prefix["rated"][lo], n)
        return pl.DataFrame(
            {
                RECENT_RATING_SUM: last.sum(axis=1, dtype=np.float64),
                RECENT_RATED: count.astype(np.int32),
            }
        )


def _prefix(values: np.ndarray) -> np.ndarray:
    """(N + 1,) exclusive prefix sums: entry j is the sum of the first j values."""
    out = np.zeros(values.size + 1, dtype=values.dtype)
    np.cumsum(values, out=out[1:])
    return out


def _last(
    values: np.ndarray, prefix: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int
) -> np.ndarray:
    """The last n of the selected `values` inside lo..hi (prefix: how many selected
    events precede each sorted position), right-aligned, zero-padded on the left."""
    out = np.zeros((lo.size, n), dtype=values.dtype)
    if values.size == 0 or n == 0:
        return out
    first, end = prefix[lo], prefix[hi]
    offsets = np.arange(n) - n  # -n .. -1
    for begin in range(0, lo.size, 1 << 20):  # bounds the (rows, n) temporaries
        part = slice(begin, begin + (1 << 20))
        position = end[part, None] + offsets[None, :]
        valid = position >= first[part, None]
        out[part] = np.where(valid, values[np.where(valid, position, 0)], 0)
    return out
