"""FAISS inner-product index over exported item vectors, with per-user exclusions.

The model's click logit is `users[u] @ items[i]`, so the index metric is always inner
product: retrieval returns the items the click head ranks highest. Result order is
score descending, ties broken by the lower item id; `brute_force_topk` is the numpy
reference with the same rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

from recsys_mtl.atomic import atomic_path
from recsys_mtl.errors import RecsysError

QUERY_CHUNK = 4096
"""Rows of user vectors searched at once, so memory stays bounded for large Q."""

FACTORY_EXAMPLES = "use 'auto', 'Flat', 'HNSW32', 'IVF256,Flat' or 'IVF256,PQ16'"
_META_VERSION = 1

EXACT_UP_TO = 100_000
"""Catalogues up to this size get an exact ('Flat') index from `factory='auto'`."""


def default_factory(n_items: int) -> str:
    """The factory string 'auto' resolves to for a catalogue of `n_items` items.

    Exact search up to `EXACT_UP_TO` items (a 100k x 65 scan is about a millisecond per
    query); above it an inverted file with ~4 sqrt(N) lists (a power of two) holding
    8-bit scalar-quantised vectors, whose `nprobe` is tuned to a target recall when the
    pipeline builds it. SQ8 reads a quarter of the bytes of float vectors, and scanning
    the lists is memory-bound: on 1M items it doubles the queries per second of
    'IVF4096,Flat' at the same nprobe for about one point of recall@100
    (benchmarks/results/retrieval_speed.md).
    """
    if n_items <= EXACT_UP_TO:
        return "Flat"
    lists = 2 ** round(float(np.log2(4 * np.sqrt(n_items))))
    return f"IVF{lists},SQ8"


class ItemIndex:
    """A FAISS inner-product index whose ids are item rows 0..N-1.

    Build with `ItemIndex.build` or `ItemIndex.load`; query with `search`.
    """

    def __init__(
        self,
        index: faiss.Index,
        factory: str,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        self._index = index
        self._factory = factory
        self._nprobe = nprobe
        self._ef_search = ef_search

    @property
    def n_items(self) -> int:
        """Number of indexed items N."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self._index.d)

    @property
    def factory(self) -> str:
        """The FAISS factory string the index was built from."""
        return self._factory

    @property
    def search_parameter(self) -> str | None:
        """The knob trading speed for recall: 'nprobe' (IVF), 'efSearch' (HNSW) or None
        (exact and PQ-only indexes)."""
        if _ivf_of(self._index) is not None:
            return "nprobe"
        if _hnsw_of(self._index) is not None:
            return "efSearch"
        return None

    @property
    def search_value(self) -> int | None:
        """The current value of `search_parameter` (None for exact indexes)."""
        ivf, hnsw = _ivf_of(self._index), _hnsw_of(self._index)
        if ivf is not None:
            return int(ivf.nprobe)
        if hnsw is not None:
            return int(hnsw.hnsw.efSearch)
        return None

    def search_values(self) -> list[int]:
        """Values of `search_parameter` worth trying, cheapest first: powers of two up to
        the number of IVF lists (nprobe), or 16..2048 (efSearch)."""
        ivf = _ivf_of(self._index)
        if ivf is not None:
            return [2**p for p in range(int(np.log2(ivf.nlist)) + 1)] + (
                [int(ivf.nlist)] if ivf.nlist & (ivf.nlist - 1) else []
            )
        if _hnsw_of(self._index) is not None:
            return [2**p for p in range(4, 12)]
        return []

    def set_search_value(self, value: int) -> None:
        """Set `search_parameter` (nprobe or efSearch) for later searches and saves."""
        name = self.search_parameter
        if name is None:
            raise RecsysError(
                f"the {self._factory!r} index has no search parameter to set",
                where="ItemIndex.set_search_value",
                fix="use an IVF (nprobe) or HNSW (efSearch) factory string",
            )
        _set_search_params(
            self._index,
            self._factory,
            nprobe=value if name == "nprobe" else None,
            ef_search=value if name == "efSearch" else None,
        )
        if name == "nprobe":
            self._nprobe = int(value)
        else:
            self._ef_search = int(value)

    def search_unfiltered(self, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw FAISS search (Q, k): no exclusions, no tie rule; for quality reports."""
        _check_k(k)
        users = _as_vectors(user_vectors, "user_vectors", where="ItemIndex.search", dim=self.dim)
        return self._index.search(users, min(k, self.n_items))

    def __repr__(self) -> str:
        return f"ItemIndex(factory={self._factory!r}, n_items={self.n_items}, dim={self.dim})"

    @classmethod
    def build(
        cls,
        item_vectors: np.ndarray,
        factory: str = "Flat",
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        train_seed: int = 0,
    ) -> ItemIndex:
        """Index `item_vectors` (N, D); row i gets id i.

        IVF/PQ indexes are trained on the item vectors themselves (k-means seeded by
        `train_seed`). `nprobe` (IVF) and `ef_search` (HNSW) trade speed for recall.
        """
        items = _as_vectors(item_vectors, "item_vectors", where="ItemIndex.build")
        n_items, dim = items.shape
        if not isinstance(factory, str) or not factory.strip():
            raise RecsysError(
                f"factory must be a non-empty FAISS factory string, got {factory!r}",
                where="ItemIndex.build",
                fix=FACTORY_EXAMPLES,
            )
        if factory.strip().lower() == "auto":
            factory = default_factory(n_items)
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise RecsysError(
                f"cannot build a FAISS index from factory string {factory!r} for "
                f"{dim}-dim vectors: {_faiss_reason(exc)}",
                where="ItemIndex.build",
                fix=f"{FACTORY_EXAMPLES} (for PQm, m must divide the dimension {dim})",
            ) from None
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise RecsysError(
                f"factory string {factory!r} gives an index that cannot search by inner "
                "product, so it would not return the items the click head ranks highest",
                where="ItemIndex.build",
                fix=FACTORY_EXAMPLES,
            )
        ivf = _ivf_of(index)
        if ivf is not None and ivf.nlist > n_items:
            suggested = max(1, int(np.sqrt(n_items)))
            raise RecsysError(
                f"factory string {factory!r} asks for {ivf.nlist} IVF lists but there are "
                f"only {n_items} items to cluster",
                where="ItemIndex.build",
                fix=f"use at most {n_items} lists, e.g. 'IVF{suggested},Flat', or 'Flat' for "
                "a small catalogue",
            )
        if not index.is_trained:
            _prepare_training(index, train_seed)
            try:
                index.train(items)
            except RuntimeError as exc:
                raise RecsysError(
                    f"training the {factory!r} index on {n_items} items failed: "
                    f"{_faiss_reason(exc)}",
                    where="ItemIndex.build",
                    fix="PQ needs at least 256 items per sub-quantizer codebook (use 'PQ16x4' "
                    "for 16 centroids) and IVFn needs at least n items; or use 'Flat'",
                ) from None
        index.add(items)
        _set_search_params(index, factory, nprobe=nprobe, ef_search=ef_search)
        return cls(index, factory, nprobe=nprobe, ef_search=ef_search)

    def search(
        self,
        user_vectors: np.ndarray,
        k: int,
        exclude_indptr: np.ndarray | None = None,
        exclude_items: np.ndarray | None = None,
        *,
        chunk_size: int = QUERY_CHUNK,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product for each user vector (Q, D).

        Query q never gets `exclude_items[exclude_indptr[q]:exclude_indptr[q + 1]]` (CSR,
        item rows). Returns scores (Q, k) float32 and items (Q, k) int64, score descending,
        ties by lower item id; missing slots hold item -1 and score -inf.
        """
        _check_k(k)
        users = _as_vectors(user_vectors, "user_vectors", where="ItemIndex.search", dim=self.dim)
        indptr, excluded = _check_exclusions(
            exclude_indptr, exclude_items, len(users), self.n_items, where="ItemIndex.search"
        )
        if chunk_size <= 0:
            raise RecsysError(
                f"chunk_size must be positive, got {chunk_size}",
                where="ItemIndex.search",
                fix=f"leave it at the default {QUERY_CHUNK}",
            )
        n_queries, n_items = len(users), self.n_items
        scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        ids = np.full((n_queries, k), -1, dtype=np.int64)
        # Over-fetch per query (see _fetch_groups), then drop the excluded.
        for fetch, rows in _fetch_groups(indptr, k, n_items, chunk_size):
            sub_indptr, sub_excluded = csr_rows(indptr, excluded, rows)
            row_scores, row_ids = self._search_excluding(
                users[rows], k, fetch, sub_indptr, sub_excluded
            )
            scores[rows], ids[rows] = row_scores, row_ids
        return scores, ids

    def _search_excluding(
        self,
        users: np.ndarray,
        k: int,
        fetch: int,
        indptr: np.ndarray,
        excluded: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fetch `fetch` candidates per query, drop the excluded, keep the best k."""
        rows, n_items = len(users), self.n_items
        scores = np.full((rows, k), -np.inf, dtype=np.float32)
        ids = np.full((rows, k), -1, dtype=np.int64)
        cand_scores, cand_ids = self._index.search(users, fetch)
        valid = (cand_ids >= 0) & _allowed(cand_ids, indptr, excluded, n_items)
        # lexsort: last key is primary -> valid first, score descending, lower id.
        order = np.lexsort((cand_ids, -cand_scores, ~valid), axis=-1)[:, :k]
        top_valid = np.take_along_axis(valid, order, axis=1)
        width = order.shape[1]
        ids[:, :width] = np.where(top_valid, np.take_along_axis(cand_ids, order, axis=1), -1)
        scores[:, :width] = np.where(
            top_valid, np.take_along_axis(cand_scores, order, axis=1), -np.inf
        )
        return scores, ids

    def save(self, path: Path | str) -> None:
        """Write the index to `path` and its metadata to `path.with_suffix('.json')`.

        Both files are written atomically (temporary file in the same folder, then rename).
        """
        path = Path(path)
        meta_path = _meta_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        index = self._index
        _write_atomically(path, lambda tmp: faiss.write_index(index, str(tmp)))
        meta = {
            "format_version": _META_VERSION,
            "factory": self._factory,
            "dim": self.dim,
            "n_items": self.n_items,
            "metric": "inner_product",
            "nprobe": self._nprobe,
            "ef_search": self._ef_search,
        }
        text = json.dumps(meta, indent=2) + "\n"
        _write_atomically(meta_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: Path | str) -> ItemIndex:
        """Read an index written by `save` (the index file plus its `.json` side file)."""
        path = Path(path)
        meta_path = _meta_path(path)
        fix = "rebuild it with ItemIndex.build(item_vectors, factory).save(path)"
        for needed in (path, meta_path):
            if not needed.is_file():
                raise RecsysError(
                    f"index file {needed} does not exist",
                    where="ItemIndex.load",
                    fix=f"check the path, or {fix}",
                )
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise RecsysError(
                f"cannot read FAISS index {path}: {_faiss_reason(exc)}",
                where="ItemIndex.load",
                fix=f"the file is corrupt or not a FAISS index; {fix}",
            ) from None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            factory = str(meta["factory"])
            dim, n_items = int(meta["dim"]), int(meta["n_items"])
            nprobe, ef_search = meta.get("nprobe"), meta.get("ef_search")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RecsysError(
                f"cannot read index metadata {meta_path}: {exc!r}",
                where="ItemIndex.load",
                fix=f"the file is corrupt; {fix}",
            ) from None
        if (dim, n_items) != (index.d, index.ntotal):
            raise RecsysError(
                f"index {path} holds {index.ntotal} items of dim {index.d} but {meta_path} "
                f"says {n_items} items of dim {dim}; the two files come from different saves",
                where="ItemIndex.load",
                fix=fix,
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise RecsysError(
                f"index {path} does not use the inner-product metric",
                where="ItemIndex.load",
                fix=fix,
            )
        _set_search_params(index, factory, nprobe=nprobe, ef_search=ef_search)
        return cls(index, factory, nprobe=nprobe, ef_search=ef_search)


def csr_rows(
    indptr: np.ndarray, items: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gather rows of a CSR list (vectorised): returns the sub-matrix's (indptr, items)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    sub_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    offsets = np.arange(sub_indptr[-1]) - np.repeat(sub_indptr[:-1], lengths)
    return sub_indptr, items[np.repeat(starts, lengths) + offsets]


def ordered_topk(
    order: np.ndarray,
    n_queries: int,
    k: int,
    exclude_indptr: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k item rows (Q, k) of one ranking shared by every query (`order`: item rows,
    best first, e.g. by popularity) minus each query's excluded items (CSR); -1 pads.

    Each query only looks at the first k + (its exclusions) entries of `order`, so the
    cost is O(Q (k + exclusions)), not a scan of the catalogue per query."""
    _check_k(k)
    order = np.asarray(order, dtype=np.int64)
    n_items = int(order.max(initial=-1)) + 1
    indptr, excluded = _check_exclusions(
        exclude_indptr, exclude_items, n_queries, max(n_items, 1), where="ordered_topk"
    )
    out = np.full((n_queries, k), -1, dtype=np.int64)
    for fetch, rows in _fetch_groups(indptr, k, order.size, QUERY_CHUNK):
        sub_indptr, sub_excluded = csr_rows(indptr, excluded, rows)
        candidates = np.broadcast_to(order[:fetch], (len(rows), fetch))
        valid = _allowed(candidates, sub_indptr, sub_excluded, n_items)
        # A stable sort on "not allowed" keeps the shared order among allowed items.
        position = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(valid, position, axis=1)
        width = position.shape[1]
        out[rows, :width] = np.where(kept, np.take_along_axis(candidates, position, 1), -1)
    return out


def _fetch_groups(
    indptr: np.ndarray, k: int, limit: int, chunk_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(fetch size, query rows) groups: each query needs k + (its exclusions) candidates,
    rounded up to a power of two (at most `limit`) so the k best allowed items are among
    them. Grouping by that size means one user with 10k exclusions does not make every
    other query fetch 10k; groups come in chunks of at most `chunk_size` rows."""
    counts = np.diff(indptr)
    fetch_sizes = np.minimum(2 ** np.ceil(np.log2(k + counts)).astype(np.int64), limit)
    for fetch in np.unique(fetch_sizes):
        group = np.flatnonzero(fetch_sizes == fetch)
        for start in range(0, len(group), chunk_size):
            yield int(fetch), group[start : start + chunk_size]


def _allowed(
    candidates: np.ndarray, indptr: np.ndarray, excluded: np.ndarray, n_items: int
) -> np.ndarray:
    """(Q, F) bool: candidate item rows (Q, F) not in their query's exclusions (CSR)."""
    counts = np.diff(indptr)
    if not counts.any():
        return np.ones(candidates.shape, dtype=bool)
    # Pair keys row * N + item mark the excluded (query, item) pairs.
    rows = np.arange(len(candidates), dtype=np.int64)
    excluded_keys = np.repeat(rows, counts) * n_items + excluded
    return ~np.isin(rows[:, None] * n_items + candidates, excluded_keys)


def brute_force_topk(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    exclude_indptr: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product in numpy: users (Q, D), items (N, D).

    Same contract as `ItemIndex.search`: scores (Q, k) float32, items (Q, k) int64, score
    descending, ties by lower item id, excluded items (CSR) removed, padding -1 / -inf.
    """
    _check_k(k)
    items = _as_vectors(item_vectors, "item_vectors", where="brute_force_topk")
    users = _as_vectors(user_vectors, "user_vectors", where="brute_force_topk", dim=items.shape[1])
    n_queries, n_items = len(users), len(items)
    indptr, excluded = _check_exclusions(
        exclude_indptr, exclude_items, n_queries, n_items, where="brute_force_topk"
    )
    width = min(k, n_items)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    ids = np.full((n_queries, k), -1, dtype=np.int64)
    for start in range(0, n_queries, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, n_queries)
        all_scores = users[start:stop] @ items.T  # (rows, N)
        allowed = np.ones(all_scores.shape, dtype=bool)
        rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
        allowed[rows, excluded[indptr[start] : indptr[stop]]] = False
        # Stable sort of (not allowed, -score) keeps lower ids first among ties.
        ranked = np.where(allowed, -all_scores, np.inf)
        order = np.argsort(ranked, axis=1, kind="stable")[:, :width]
        top_allowed = np.take_along_axis(allowed, order, axis=1)
        ids[start:stop, :width] = np.where(top_allowed, order, -1)
        scores[start:stop, :width] = np.where(
            top_allowed, np.take_along_axis(all_scores, order, axis=1), -np.inf
        )
    return scores, ids


def _as_vectors(
    vectors: np.ndarray, name: str, *, where: str, dim: int | None = None
) -> np.ndarray:
    """Check a (rows, D) float matrix of finite values; return it as contiguous float32."""
    array = np.asarray(vectors)
    if array.ndim != 2 or array.dtype.kind != "f":
        raise RecsysError(
            f"{name} must be a 2-D float array (rows, D), got shape {array.shape} "
            f"dtype {array.dtype}",
            where=where,
            fix="pass the exported vectors as np.float32 of shape (rows, D)",
        )
    if dim is None and array.shape[0] == 0:
        raise RecsysError(f"{name} has no rows", where=where, fix="index at least one item")
    if array.shape[1] == 0 or (dim is not None and array.shape[1] != dim):
        expected = dim if dim is not None else "at least 1"
        raise RecsysError(
            f"{name} has dimension {array.shape[1]}, expected {expected}",
            where=where,
            fix="export user and item vectors from the same model",
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise RecsysError(
            f"{name} has {len(bad)} rows with NaN or infinite values (first rows: "
            f"{bad[:5].tolist()})",
            where=where,
            fix="check the model for diverged training before exporting vectors",
        )
    return array


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise RecsysError(
            f"k must be a positive integer, got {k!r}",
            where="retrieval top-k",
            fix="ask for at least one item, e.g. k=100",
        )


def _check_exclusions(
    indptr: np.ndarray | None,
    items: np.ndarray | None,
    n_queries: int,
    n_items: int,
    *,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the CSR exclusion lists; return (indptr (Q+1,), items (nnz,)) as int64."""
    if indptr is None and items is None:
        return np.zeros(n_queries + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    fix = (
        "pass exclude_indptr (Q+1,) and exclude_items (nnz,) as CSR: query q excludes "
        "exclude_items[exclude_indptr[q]:exclude_indptr[q+1]], item rows in [0, n_items)"
    )
    if indptr is None or items is None:
        raise RecsysError(
            "exclude_indptr and exclude_items must be given together", where=where, fix=fix
        )
    indptr_arr, items_arr = np.asarray(indptr), np.asarray(items)
    if indptr_arr.dtype.kind not in "iu" or items_arr.dtype.kind not in "iu":
        raise RecsysError(
            f"exclusions must be integer arrays, got {indptr_arr.dtype} and {items_arr.dtype}",
            where=where,
            fix=fix,
        )
    indptr_arr = indptr_arr.astype(np.int64, copy=False)
    items_arr = items_arr.astype(np.int64, copy=False)
    if (
        indptr_arr.shape != (n_queries + 1,)
        or items_arr.ndim != 1
        or indptr_arr[0] != 0
        or indptr_arr[-1] != len(items_arr)
        or (np.diff(indptr_arr) < 0).any()
    ):
        raise RecsysError(
            f"exclude_indptr must have {n_queries + 1} non-decreasing entries from 0 to "
            f"len(exclude_items)={items_arr.size}, got shape {indptr_arr.shape}",
            where=where,
            fix=fix,
        )
    out_of_range = (items_arr < 0) | (items_arr >= n_items)
    if out_of_range.any():
        raise RecsysError(
            f"exclude_items holds item rows outside [0, {n_items}), e.g. "
            f"{items_arr[out_of_range][:5].tolist()}",
            where=where,
            fix="map vocabulary indices to index rows before excluding them",
        )
    return indptr_arr, items_arr


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    downcast = faiss.downcast_index(index)
    return downcast if isinstance(downcast, faiss.IndexHNSW) else None


def _prepare_training(index: faiss.Index, seed: int) -> None:
    """Seed the k-means of the IVF coarse quantizer and PQ codebooks; skip polysemous training.

    index_factory turns on polysemous training for 8-bit PQ; it only reorders codes for
    Hamming-filtered L2 search, which inner-product search never uses, and it costs ~60x
    the k-means time.
    """
    ivf = _ivf_of(index)
    for part in (index, ivf):
        if part is None:
            continue
        part = faiss.downcast_index(part)
        if hasattr(part, "cp"):
            part.cp.seed = seed
        if hasattr(part, "pq"):
            part.pq.cp.seed = seed
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def _set_search_params(
    index: faiss.Index, factory: str, *, nprobe: int | None, ef_search: int | None
) -> None:
    params = faiss.ParameterSpace()
    for name, value, kind in (("nprobe", nprobe, "IVF"), ("efSearch", ef_search, "HNSW")):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise RecsysError(
                f"{name} must be a positive integer, got {value!r}",
                where="ItemIndex.build",
                fix=f"pass e.g. {name}=16, or leave it unset",
            )
        try:
            params.set_index_parameter(index, name, int(value))
        except RuntimeError:
            raise RecsysError(
                f"{name} applies to {kind} indexes, not to {factory!r}",
                where="ItemIndex.build",
                fix=f"leave {name} unset, or use an {kind} factory string",
            ) from None


def _faiss_reason(exc: RuntimeError) -> str:
    """The readable tail of a FAISS error ('Error in <fn> at <file>:<line>: reason')."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)


def _meta_path(path: Path) -> Path:
    meta_path = path.with_suffix(".json")
    if meta_path == path:
        raise RecsysError(
            f"index path {path} ends in .json, which is reserved for its metadata",
            where="ItemIndex",
            fix="name the index file e.g. 'items.faiss'",
        )
    return meta_path


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it to `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
