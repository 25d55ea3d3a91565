"""What an approximate index costs: recall@K against exact search, and queries per second.

`measure_quality` sweeps the index's search parameter (nprobe for IVF, efSearch for
HNSW) over real query vectors, measures recall@K against an exact inner-product scan of
the same item vectors and the batched throughput at each value, and `tune` keeps the
cheapest value that reaches a target recall.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from recsys_mtl.errors import RecsysError
from recsys_mtl.retrieval.index import ItemIndex

NEAR_EXACT = 0.999
"""The sweep stops once recall reaches this, or reaches the target and gains less than
FLAT_GAIN from the previous value."""
FLAT_GAIN = 0.001


@dataclass(frozen=True)
class OperatingPoint:
    """One setting of the index's search parameter and what it gives."""

    parameter: str | None
    value: int | None
    recall: float
    queries_per_second: float
    ms_per_query: float


@dataclass
class QualityReport:
    """Recall/speed operating points of an index, and the one chosen."""

    factory: str
    n_items: int
    n_queries: int
    k: int
    target_recall: float
    exact_queries_per_second: float
    points: list[OperatingPoint]
    chosen: OperatingPoint

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics of the chosen operating point."""
        return {
            f"index/recall_at_{self.k}": self.chosen.recall,
            "index/queries_per_second": self.chosen.queries_per_second,
            "index/exact_queries_per_second": self.exact_queries_per_second,
        }


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact| for item rows (Q, K); -1 pads."""
    if found.shape[0] != exact.shape[0]:
        raise ValueError("found and exact need the same number of queries")
    n_items = int(max(found.max(initial=0), exact.max(initial=0))) + 2
    rows = np.arange(len(exact), dtype=np.int64)[:, None]
    # Pair keys row * (N + 1) + item + 1 turn the per-row intersection into one isin.
    exact_keys = (rows * n_items + exact + 1)[exact >= 0]
    found_keys = (rows * n_items + found + 1)[found >= 0]
    hits = np.isin(exact_keys, found_keys).sum()
    return float(hits / max(len(exact_keys), 1))


def _timed_search(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    repeats: int,
) -> tuple[np.ndarray, float]:
    """Run `search(queries, k)` `repeats` times; return its ids and the best seconds."""
    best = float("inf")
    ids = np.zeros((0, k), dtype=np.int64)
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = search(queries, k)
        best = min(best, time.perf_counter() - start)
    return ids, best


def measure_quality(
    index: ItemIndex,
    item_vectors: np.ndarray,
    query_vectors: np.ndarray,
    *,
    k: int = 100,
    target_recall: float = 0.95,
    values: list[int] | None = None,
    repeats: int = 2,
) -> QualityReport:
    """Sweep the index's search parameter over `values` (default `index.search_values()`)
    and measure recall@k and throughput on `query_vectors` (Q, D); exact reference by
    an inner-product scan of `item_vectors` (N, D). The index is left at the chosen value:
    the cheapest reaching `target_recall`, else the most accurate one tried."""
    if not 0 < target_recall <= 1:
        raise RecsysError(
            f"target recall must be in (0, 1], got {target_recall}",
            where="retrieval.target_recall",
            fix="use e.g. 0.95",
        )
    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if len(queries) == 0:
        raise RecsysError(
            "no query vectors to measure the index with",
            where="measure_quality",
            fix="pass at least one user vector",
        )
    k = min(k, index.n_items)
    exact_index = faiss.IndexFlatIP(items.shape[1])
    exact_index.add(items)
    exact_ids, exact_seconds = _timed_search(exact_index.search, queries, k, repeats)
    parameter = index.search_parameter
    tried = (values or index.search_values()) if parameter else [None]
    original = index.search_value
    points: list[OperatingPoint] = []
    for value in tried:
        if value is not None:
            index.set_search_value(value)
        found, seconds = _timed_search(index.search_unfiltered, queries, k, repeats)
        points.append(
            OperatingPoint(
                parameter,
                value,
                recall_at_k(found, exact_ids),
                len(queries) / seconds,
                1000 * seconds / len(queries),
            )
        )
        recall = points[-1].recall
        flat = len(points) > 1 and recall - points[-2].recall < FLAT_GAIN
        if recall >= NEAR_EXACT or (recall >= target_recall and flat):
            break  # the rest of the curve is flat (quantised codes cap recall below 1)
    reaching = [p for p in points if p.recall >= target_recall]
    chosen = reaching[0] if reaching else max(points, key=lambda p: p.recall)
    if chosen.value is not None:
        index.set_search_value(chosen.value)
    elif original is not None:
        index.set_search_value(original)
    return QualityReport(
        index.factory,
        index.n_items,
        len(queries),
        k,
        target_recall,
        len(queries) / exact_seconds,
        points,
        chosen,
    )
