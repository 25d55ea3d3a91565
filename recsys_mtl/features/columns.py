"""Feature columns: fit on training rows, then encode raw values into model inputs.

Kinds of fitted column (`ColumnSpec.kind`):
  categorical   vocabulary (min count, padding 0, unknown 1) or stable hashing -> index
  bucket        numeric value -> quantile bucket index (edges fitted on training rows)
  numeric       numeric value -> standardised float (mean/std of training rows)
  list          list of strings -> (N, max_length) indices, 0-padded (pooled in the model)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from recsys_mtl.config import FeatureDecl
from recsys_mtl.features.vocab import FIRST, PAD, UNKNOWN, Vocabulary

EMBEDDED_KINDS = ("categorical", "bucket")


@dataclass
class ColumnSpec:
    """One fitted feature: `name` is the model-facing name, `source` the raw column."""

    name: str
    kind: str
    source: str = ""
    size: int = 0  # embedding rows (categorical, bucket, list)
    hash_buckets: int = 0
    mean: float = 0.0
    std: float = 1.0
    edges: list[float] = field(default_factory=list)
    max_length: int = 0


# ---------------------------------------------------------------------------- hashing

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def stable_hash(values: pl.Series) -> np.ndarray:
    """(N,) uint64 hashes that do not change across library versions or processes.

    Integers go through splitmix64; strings through FNV-1a over their UTF-8 bytes,
    vectorised over rows (one pass per byte position). Nulls hash like the empty string.
    """
    if values.dtype.is_integer():
        x = values.cast(pl.Int64).fill_null(0).to_numpy().astype(np.uint64)
        with np.errstate(over="ignore"):
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return x ^ (x >> np.uint64(31))
    text = values.cast(pl.String).fill_null("").to_arrow()
    text = pa.chunked_array([text]) if isinstance(text, pa.Array) else text
    text = text.cast(pa.large_string()).combine_chunks()
    _, offsets_buffer, data_buffer = text.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
        text.offset : text.offset + len(text) + 1
    ]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0)
    starts, lengths = offsets[:-1], np.diff(offsets)
    hashes = np.full(len(text), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for position in range(int(lengths.max(initial=0))):
            active = np.flatnonzero(lengths > position)
            byte = data[starts[active] + position].astype(np.uint64)
            hashes[active] = (hashes[active] ^ byte) * _FNV_PRIME
    return hashes


def hash_index(values: pl.Series, buckets: int) -> np.ndarray:
    """Indices in [FIRST, FIRST + buckets) for non-null values; UNKNOWN for nulls."""
    index = (stable_hash(values) % np.uint64(buckets)).astype(np.int64) + FIRST
    return np.where(values.is_null().to_numpy(), UNKNOWN, index)


# ---------------------------------------------------------------------------- fitting


def infer_decl(dtype: pl.DataType) -> FeatureDecl | None:
    """The declaration an undeclared column gets, or None when it cannot be a feature."""
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return FeatureDecl(kind="categorical")
    if isinstance(dtype, pl.List):
        return FeatureDecl(kind="list")
    if dtype == pl.Boolean or dtype.is_numeric():
        return FeatureDecl(kind="numeric")
    return None


def fit_column(
    name: str,
    source: str,
    column: pl.Series,
    decl: FeatureDecl,
    min_count: int,
    max_list_length: int,
) -> tuple[ColumnSpec, Vocabulary | None]:
    """Fit one feature on the training values in `column`."""
    min_count = decl.min_count or min_count
    if decl.kind == "categorical":
        if decl.hash_buckets:
            return ColumnSpec(
                name, "categorical", source, FIRST + decl.hash_buckets, decl.hash_buckets
            ), None
        vocab = Vocabulary.fit(column.cast(pl.String), source, min_count)
        return ColumnSpec(name, "categorical", source, vocab.size), vocab
    if decl.kind == "list":
        length = decl.max_length or max_list_length
        values = column.cast(pl.List(pl.String)).explode().drop_nulls()
        if decl.hash_buckets:
            spec = ColumnSpec(name, "list", source, FIRST + decl.hash_buckets, decl.hash_buckets)
            spec.max_length = length
            return spec, None
        vocab = Vocabulary.fit(values, source, min_count)
        return ColumnSpec(name, "list", source, vocab.size, max_length=length), vocab
    values = column.cast(pl.Float64).fill_nan(None).drop_nulls()
    if decl.transform == "quantile":
        quantiles = np.linspace(0, 1, decl.buckets + 1)[1:-1]
        edges = np.unique(np.quantile(values.to_numpy(), quantiles)) if len(values) else []
        edges_list = [float(e) for e in edges]
        return ColumnSpec(
            name, "bucket", source, FIRST + len(edges_list) + 1, edges=edges_list
        ), None
    mean = float(values.mean()) if len(values) else 0.0
    std = float(values.std()) if len(values) > 1 else 1.0
    return ColumnSpec(name, "numeric", source, mean=mean, std=std if std > 0 else 1.0), None


# ---------------------------------------------------------------------------- encoding


def encode_column(spec: ColumnSpec, vocab: Vocabulary | None, column: pl.Series) -> np.ndarray:
    """Encode raw values: (N,) int64 for categorical/bucket, (N,) float32 for numeric,
    (N, max_length) int64 for lists. Unseen and null values map to UNKNOWN (lists: dropped)."""
    if spec.kind == "categorical":
        if spec.hash_buckets:
            return hash_index(column.cast(pl.String), spec.hash_buckets)
        assert vocab is not None
        return vocab.encode(column.cast(pl.String)).to_numpy().astype(np.int64)
    if spec.kind == "bucket":
        values = column.cast(pl.Float64).fill_nan(None)
        missing = values.is_null().to_numpy()
        index = np.searchsorted(np.asarray(spec.edges), values.fill_null(0).to_numpy(), "right")
        return np.where(missing, UNKNOWN, index + FIRST).astype(np.int64)
    if spec.kind == "numeric":
        values = column.cast(pl.Float64).fill_nan(None).fill_null(spec.mean).to_numpy()
        return ((values - spec.mean) / spec.std).astype(np.float32)
    return _encode_list(spec, vocab, column)


def _encode_list(spec: ColumnSpec, vocab: Vocabulary | None, column: pl.Series) -> np.ndarray:
    n = len(column)
    out = np.full((n, spec.max_length), PAD, dtype=np.int64)
    values = column.cast(pl.List(pl.String)).list.drop_nulls().list.head(spec.max_length)
    lengths = values.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = values.explode().drop_nulls()
    if flat.len() == 0:
        return out
    if spec.hash_buckets:
        codes = hash_index(flat, spec.hash_buckets)
    else:
        assert vocab is not None
        codes = vocab.encode(flat).to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(codes.size) - np.repeat(starts, lengths)
    out[rows, positions] = codes
    return out
