"""Validate user-supplied tables against the impressions contract (DESIGN.md).

Every check is a polars expression over whole columns; a failed check raises a
`RecsysError` that names the column, shows up to three offending rows (with their
0-based `row` number) and says how to fix it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import polars as pl

from recsys_mtl.data.dataset import ID_COLUMNS, ORACLE_PREFIX
from recsys_mtl.errors import RecsysError, example_rows

REQUIRED = ("user_id", "item_id", "timestamp", "click")
OPTIONAL = ("purchase", "rating")

#: Common spellings of the canonical columns, used to suggest a rename.
_ALIASES: dict[str, tuple[str, ...]] = {
    "user_id": ("user", "uid", "userid", "customer_id", "visitor_id"),
    "item_id": ("item", "iid", "itemid", "movie_id", "product_id", "movieid"),
    "timestamp": ("ts", "time", "datetime", "event_time", "date"),
    "click": ("clicked", "is_click", "clicks"),
    "purchase": ("purchased", "is_purchase", "bought", "conversion"),
    "rating": ("ratings", "score", "stars"),
}
#: Upper bounds (exclusive) on |timestamp| for each unit; larger values are nanoseconds.
_UNIT_BOUNDS = ((10**11, "s"), (10**14, "ms"), (10**17, "us"))
_UNIT_DIVISORS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


# ------------------------------------------------------------------------ helpers


def to_polars(frame: Any, where: str) -> pl.DataFrame:
    """Return `frame` as an eager polars DataFrame (polars eager/lazy or pandas accepted)."""
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    if type(frame).__module__.split(".")[0] == "pandas" and type(frame).__name__ == "DataFrame":
        try:
            return pl.from_pandas(frame)
        except Exception as exc:  # pyarrow conversion errors come in many types
            raise RecsysError(
                f"could not convert the pandas DataFrame to polars: {exc}",
                where=where,
                fix="give every column a single type and unique column names",
            ) from None
    raise RecsysError(
        f"expected a polars or pandas DataFrame, got {type(frame).__module__}."
        f"{type(frame).__name__}",
        where=where,
        fix="pass a pl.DataFrame, pl.LazyFrame or pd.DataFrame",
    )


def _examples(df: pl.DataFrame, mask: pl.Expr, columns: list[str]) -> str:
    """Up to 3 rows where `mask` holds, showing their row number and `columns`."""
    keep = ["row", *[c for c in dict.fromkeys(columns) if c in df.columns]]
    return example_rows(df.with_row_index("row").filter(mask).select(keep))


def _context(df: pl.DataFrame, column: str) -> list[str]:
    return [c for c in (*ID_COLUMNS, column) if c in df.columns]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _suggest(missing: str, present: list[str]) -> str | None:
    """The present column that most likely means `missing` (e.g. 'userId' for 'user_id')."""
    by_norm = {_norm(c): c for c in present}
    for candidate in (missing, *_ALIASES.get(missing, ())):
        if _norm(candidate) in by_norm:
            return by_norm[_norm(candidate)]
    close = difflib.get_close_matches(_norm(missing), list(by_norm), n=1, cutoff=0.75)
    return by_norm[close[0]] if close else None


def _require(df: pl.DataFrame, column: str, where: str, what: str) -> None:
    if column in df.columns:
        return
    guess = _suggest(column, df.columns)
    fix = (
        f"rename '{guess}' to '{column}', e.g. df.rename({{'{guess}': '{column}'}})"
        if guess
        else f"add a '{column}' column ({what})"
    )
    raise RecsysError(
        f"required column '{column}' is missing; columns present: {', '.join(df.columns)}",
        where=where,
        fix=fix,
    )


def _no_nulls(df: pl.DataFrame, column: str, where: str, fix: str) -> None:
    n = df.get_column(column).null_count()
    if n:
        rows = _examples(df, pl.col(column).is_null(), _context(df, column))
        raise RecsysError(
            f"column '{column}' has {n} null value(s), e.g. {rows}", where=where, fix=fix
        )


def _wrong_dtype(df: pl.DataFrame, column: str, where: str, expected: str, fix: str) -> RecsysError:
    rows = _examples(df, pl.lit(True), _context(df, column))
    dtype = df.schema[column]
    return RecsysError(
        f"column '{column}' has dtype {dtype}, expected {expected}, e.g. {rows}",
        where=where,
        fix=fix,
    )


def _id_column(df: pl.DataFrame, column: str, where: str) -> pl.Expr:
    """Expression casting an id column to Int64 (integers) or String (strings)."""
    dtype = df.schema[column]
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64)
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return pl.col(column).cast(pl.String)
    raise _wrong_dtype(
        df,
        column,
        where,
        "integers or strings",
        f"cast it, e.g. pl.col('{column}').cast(pl.Int64) or .cast(pl.String) "
        f"(pandas: df['{column}'].astype('int64'))",
    )


# ---------------------------------------------------------------------- columns


def _timestamp_seconds(df: pl.DataFrame, where: str) -> pl.Expr:
    """Expression giving `timestamp` as Int64 epoch seconds, or an error."""
    col = pl.col("timestamp")
    dtype = df.schema["timestamp"]
    if isinstance(dtype, pl.Datetime | pl.Date):
        return col.dt.epoch("s")
    if dtype == pl.String:
        # Parse the Series eagerly: only then does polars infer a time zone ("...Z").
        try:
            parsed = df.get_column("timestamp").str.to_datetime(strict=False)
        except pl.exceptions.PolarsError:
            parsed = pl.Series("timestamp", [None] * df.height, dtype=pl.Datetime)
        if parsed.null_count():
            rows = _examples(df, pl.lit(parsed.is_null()), _context(df, "timestamp"))
            raise RecsysError(
                f"column 'timestamp' holds text that is not a date-time, e.g. {rows}",
                where=where,
                fix="use one ISO 8601 format (2024-05-01T12:00:00), a datetime column or "
                "integer epoch seconds",
            )
        return pl.lit(parsed.dt.epoch("s")).alias("timestamp")
    if not dtype.is_integer():
        raise _wrong_dtype(
            df,
            "timestamp",
            where,
            "integer epoch seconds or a datetime",
            "convert it to integer epoch seconds or a datetime column "
            "(pandas: pd.to_datetime(df['timestamp']))",
        )
    magnitude = col.cast(pl.Int64).abs()
    unit = pl.lit("ns")
    for bound, name in reversed(_UNIT_BOUNDS):
        unit = pl.when(magnitude < bound).then(pl.lit(name)).otherwise(unit)
    units = df.select(unit.unique(maintain_order=True)).to_series().to_list()
    if len(units) > 1:
        frame = df.with_row_index("row").with_columns(unit.alias("looks_like"))
        rows = example_rows(
            frame.unique("looks_like", keep="first", maintain_order=True).select(
                ["row", *_context(df, "timestamp"), "looks_like"]
            )
        )
        raise RecsysError(
            f"column 'timestamp' mixes units ({', '.join(units)}): seconds are < 1e11, "
            f"milliseconds < 1e14, microseconds < 1e17, e.g. {rows}",
            where=where,
            fix="convert every timestamp to the same unit, preferably epoch seconds",
        )
    return col.cast(pl.Int64) // _UNIT_DIVISORS[units[0]]


def _binary(df: pl.DataFrame, column: str, where: str) -> pl.Expr:
    """Expression giving a 0/1 label column as Int8 (nulls kept), or an error."""
    dtype = df.schema[column]
    if dtype in (pl.Boolean, pl.Null):
        return pl.col(column).cast(pl.Int8)
    if not dtype.is_numeric():
        raise _wrong_dtype(
            df,
            column,
            where,
            "0/1 integers or booleans",
            f"map it to 0/1 before loading, e.g. (pl.col('{column}') == 'yes').cast(pl.Int8)",
        )
    outside = pl.col(column).is_not_null() & (pl.col(column) != 0) & (pl.col(column) != 1)
    n = df.select(outside.sum()).item()
    if n:
        rows = _examples(df, outside, _context(df, column))
        raise RecsysError(
            f"column '{column}' has {n} value(s) outside {{0, 1}}, e.g. {rows}",
            where=where,
            fix=f"make '{column}' 1 for a positive, 0 for a negative"
            + (" and null where unknown" if column != "click" else ""),
        )
    return pl.col(column).cast(pl.Int8)


def _rating(df: pl.DataFrame, where: str, scale: tuple[float, float] | None = None) -> pl.Expr:
    """Expression giving `rating` as Float32 (nulls kept), or an error.

    NaN and infinities are always an error; without a `scale` so are negative
    ratings, with one every rating must lie in [lo, hi].
    """
    dtype = df.schema["rating"]
    if dtype == pl.Null:
        return pl.col("rating").cast(pl.Float32)
    if not dtype.is_numeric():
        raise _wrong_dtype(
            df,
            "rating",
            where,
            "numbers (null where not rated)",
            "convert ratings to numbers, e.g. pl.col('rating').cast(pl.Float32)",
        )
    value = pl.col("rating").cast(pl.Float64)
    bad = value.is_nan() | value.is_infinite()
    if scale is None:
        bad = bad | (value < 0)
    n = df.select(bad.sum()).item()
    if n:
        rows = _examples(df, bad, _context(df, "rating"))
        kinds = "negative, NaN or infinite" if scale is None else "NaN or infinite"
        raise RecsysError(
            f"column 'rating' has {n} {kinds} value(s), e.g. {rows}",
            where=where,
            fix=f"use {'non-negative' if scale is None else 'finite'} ratings and null "
            "(not NaN) for rows that were not rated",
        )
    if scale is not None:
        lo, hi = scale
        # Compare the Float32 values the table will hold, so a bound like 0.1 is not missed.
        stored = pl.col("rating").cast(pl.Float32)
        outside = (stored < pl.lit(lo, pl.Float32)) | (stored > pl.lit(hi, pl.Float32))
        n = df.select(outside.sum()).item()
        if n:
            rows = _examples(df, outside, _context(df, "rating"))
            raise RecsysError(
                f"column 'rating' has {n} value(s) outside the rating scale [{lo:g}, {hi:g}], "
                f"e.g. {rows}",
                where=where,
                fix=f"correct the ratings or set features.rating_scale = [lo, hi] to the scale "
                f"your data uses (now [{lo:g}, {hi:g}])",
            )
    return pl.col("rating").cast(pl.Float32)


def _one_of(value: str, valid: tuple[str, ...], setting: str, where: str) -> None:
    if value not in valid:
        names = ", ".join(repr(v) for v in valid)
        raise RecsysError(
            f"{setting} must be one of {names}, got {value!r}",
            where=where,
            fix=f"set {setting} to one of {names}",
        )


def _rating_scale(scale: Any, where: str) -> tuple[float, float] | None:
    """`scale` as a (lo, hi) pair of finite floats with lo < hi, or None for no check."""
    if scale is None:
        return None
    try:
        lo, hi = (float(bound) for bound in scale)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not lo < hi or float("inf") in (abs(lo), abs(hi)):
        raise RecsysError(
            f"features.rating_scale must be [lowest, highest], got {scale!r}",
            where=where,
            fix="give two finite numbers, lowest first, e.g. (1, 5); or None for no check",
        )
    return lo, hi


# ------------------------------------------------------------------------ tables


#: A duplicate impression repeats these of an earlier row.
DUPLICATE_KEY = ("user_id", "item_id", "timestamp")
DUPLICATE_POLICIES = ("keep", "drop", "error")
MISSING_SIDE_POLICIES = ("error", "unknown")


def validate_impressions(
    frame: Any,
    where: str,
    *,
    duplicates: str = "keep",
    rating_scale: tuple[float, float] | None = None,
) -> pl.DataFrame:
    """Check `frame` against the impressions contract and return its canonical form.

    Output columns: user_id (Int64 or String), item_id (Int64 or String), timestamp
    (Int64 epoch seconds), click (Int8 0/1), purchase (Int8 0/1 or null), rating
    (Float32 or null), then every other column unchanged.

    `duplicates` says what to do with rows repeating the (user_id, item_id, timestamp)
    of an earlier row, compared after conversion (timestamps in seconds): 'keep' them,
    'drop' them (the first of each group stays, input order kept) or raise an 'error'.
    `rating_scale` = (lo, hi) makes any rating outside [lo, hi] an error.
    """
    _one_of(duplicates, DUPLICATE_POLICIES, "features.duplicates", where)
    scale = _rating_scale(rating_scale, where)
    df = to_polars(frame, where)
    if df.height == 0:
        raise RecsysError(
            "the impressions table has no rows",
            where=where,
            fix="pass a table with at least one impression",
        )
    what = {
        "user_id": "who saw the item: integer or string id",
        "item_id": "what was shown: integer or string id",
        "timestamp": "when: epoch seconds or a datetime",
        "click": "1 if the user clicked, else 0",
    }
    for column in REQUIRED:
        _require(df, column, where, what[column])
    for column in ID_COLUMNS:
        _no_nulls(df, column, where, f"drop or fill the rows without a {column}")
    _no_nulls(df, "timestamp", where, "drop the rows without a timestamp, or fill them")
    _no_nulls(df, "click", where, "use 0 for impressions that were not clicked")
    if "purchase" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Int8).alias("purchase"))
    if "rating" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Float32).alias("rating"))

    out = df.with_columns(
        _id_column(df, "user_id", where),
        _id_column(df, "item_id", where),
        _timestamp_seconds(df, where),
        _binary(df, "click", where),
        _binary(df, "purchase", where),
        _rating(df, where, scale),
    )
    orphan = (pl.col("purchase") == 1) & (pl.col("click") == 0)
    n = out.select(orphan.sum()).item()
    if n:
        rows = _examples(out, orphan, [*ID_COLUMNS, "click", "purchase"])
        raise RecsysError(
            f"column 'purchase' is 1 where 'click' is 0 in {n} row(s) "
            f"(a purchase without a click), e.g. {rows}",
            where=where,
            fix="set click = 1 on purchased rows (purchases follow clicks), or purchase = 0/null",
        )
    out = _handle_duplicates(out, duplicates, where)
    canonical = [*ID_COLUMNS, "timestamp", "click", *OPTIONAL]
    return out.select(canonical + [c for c in out.columns if c not in canonical])


def _handle_duplicates(out: pl.DataFrame, policy: str, where: str) -> pl.DataFrame:
    """Apply the duplicates `policy` to a canonical impressions table."""
    if policy == "keep":
        return out
    first = pl.struct(DUPLICATE_KEY).is_first_distinct()
    if policy == "drop":
        return out.filter(first)
    n = out.select((~first).sum()).item()
    if n:
        copies = (
            out.with_row_index("row")
            .filter(pl.struct(DUPLICATE_KEY).is_duplicated())
            .sort(DUPLICATE_KEY, maintain_order=True)
        )
        rows = example_rows(copies.select("row", *DUPLICATE_KEY, "click"))
        raise RecsysError(
            f"{n} row(s) repeat the (user_id, item_id, timestamp) of an earlier row "
            f"(duplicate impressions; timestamps compared in seconds), e.g. {rows}",
            where=where,
            fix="set features.duplicates = 'drop' to keep the first of each, or 'keep' "
            "if they are genuine repeated exposures",
        )
    return out


def _feature(df: pl.DataFrame, column: str, where: str) -> pl.Expr:
    """Expression casting a side feature to String, Float32 or List(String)."""
    dtype = df.schema[column]
    col = pl.col(column)
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return col.cast(pl.String)
    if dtype == pl.Boolean or dtype.is_numeric():
        return col.cast(pl.Float32)
    if isinstance(dtype, pl.List):
        inner = dtype.inner
        if inner in (pl.String, pl.Categorical, pl.Null) or isinstance(inner, pl.Enum):
            return col.cast(pl.List(pl.String))
        if inner is not None and inner.is_integer():
            return col.cast(pl.List(pl.String))
    raise _wrong_dtype(
        df,
        column,
        where,
        "a string, number, boolean or list of strings",
        f"convert '{column}' to one of those types, or drop it",
    )


def validate_side_table(
    frame: Any, key: str, where: str, impressions: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Check a user/item side table and return it with canonical dtypes.

    `key` is 'user_id' or 'item_id'; it must be unique and of the same kind (integer
    or string) as in `impressions`. Features become String, Float32 (numbers and
    booleans) or List(String); `true_*` oracle columns are kept as they are. Ids in
    `impressions` that the table lacks are not checked here: see `check_side_coverage`.
    """
    if key not in ID_COLUMNS:
        raise ValueError(f"key must be one of {ID_COLUMNS}, got {key!r}")
    df = to_polars(frame, where)
    _require(df, key, where, f"the {key.split('_')[0]} each row describes")
    _no_nulls(df, key, where, f"drop the rows without a {key}")
    key_expr = _id_column(df, key, where)
    if impressions is not None and key in impressions.columns:
        _same_kind(df.select(key_expr).schema[key], impressions.schema[key], key, where)
    duplicated = pl.col(key).is_duplicated()
    n = df.select(duplicated.sum()).item()
    if n:
        dupes = df.with_row_index("row").filter(duplicated).sort(key, maintain_order=True)
        rows = example_rows(dupes.select(["row", key, *[c for c in df.columns[:4] if c != key]]))
        raise RecsysError(
            f"column '{key}' must be unique but {n} row(s) repeat a {key}, e.g. {rows}",
            where=where,
            fix=f"keep one row per {key}, e.g. df.unique('{key}', keep='first')",
        )
    features = [c for c in df.columns if c != key and not c.startswith(ORACLE_PREFIX)]
    oracle = [c for c in df.columns if c.startswith(ORACLE_PREFIX)]
    return df.select(key_expr, *[_feature(df, c, where) for c in features], *oracle)


def _same_kind(ours: pl.DataType, theirs: pl.DataType, key: str, where: str) -> None:
    """Error unless the side table's `key` and the impressions' are both strings or both ints."""
    if (theirs == pl.String) != (ours == pl.String):
        raise RecsysError(
            f"column '{key}' is {ours} here but {theirs} in the impressions table",
            where=where,
            fix=f"use the same kind of {key} (integers or strings) in both tables",
        )


def check_side_coverage(
    impressions: pl.DataFrame, side: pl.DataFrame, key: str, where: str, *, policy: str = "error"
) -> None:
    """Check that the side table `side` has a row for every `key` of `impressions`.

    Both tables in canonical form (`validate_impressions`, `validate_side_table`);
    `where` names the side table. policy 'error' raises, naming how many ids are
    missing and a few of them; 'unknown' accepts them (they get unknown features).
    """
    if key not in ID_COLUMNS:
        raise ValueError(f"key must be one of {ID_COLUMNS}, got {key!r}")
    _one_of(policy, MISSING_SIDE_POLICIES, "features.missing_side_rows", where)
    if policy == "unknown":
        return
    _require(side, key, where, f"the {key.split('_')[0]} each row describes")
    _same_kind(side.schema[key], impressions.schema[key], key, where)
    missing = impressions.select(key).join(
        side.select(key), on=key, how="anti", maintain_order="left"
    )
    if missing.height:
        ids = missing.unique(maintain_order=True)
        raise RecsysError(
            f"{ids.height} distinct {key}(s) of the impressions ({missing.height} impression "
            f"row(s)) have no row in the side table, e.g. {example_rows(ids)}",
            where=where,
            fix="add rows for them to the side table, or set features.missing_side_rows = "
            "'unknown' to give them unknown features",
        )
