"""MovieLens-100K and -1M in their GroupLens layouts, as positive-only impressions.

Every rating is a click; a rating at or above `purchase_threshold` is also a
purchase. Side tables: items (genres, release year) and users (age, gender,
occupation, first digit of the zip code). With `download = true` an empty
directory is filled from GroupLens, checksum verified.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from recsys_mtl.config import MovieLensSource
from recsys_mtl.data.dataset import Dataset
from recsys_mtl.data.schema import validate_impressions, validate_side_table
from recsys_mtl.errors import RecsysError

#: Files each variant needs; the ratings file comes first (it is also moved in last).
FILES: dict[str, tuple[str, ...]] = {
    "100k": ("u.data", "u.item", "u.user"),
    "1m": ("ratings.dat", "movies.dat", "users.dat"),
}
ARCHIVES = {"100k": "ml-100k", "1m": "ml-1m"}
#: MD5 of the official GroupLens archives, as published next to them
#: (files.grouplens.org/datasets/movielens/ml-100k.zip.md5 and ml-1m.zip.md5) and
#: used by e.g. github.com/eli-osherovich/papers_with_code, datasets/movielens/dl_config.py.
CHECKSUMS: dict[str, str] = {
    "100k": "0e33842e24a9c977be4e0107933c0723",
    "1m": "c4d9eecfca2ab87c1945afe126590906",
}
#: ML-100K genre flags, in the column order of u.item.
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
#: ML-1M occupation codes (users.dat), from the ML-1M README.
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
_TITLE_YEAR = r"\((\d{4})\)\s*$"


def load_movielens(cfg: MovieLensSource, seed: int = 0) -> Dataset:
    """Read ML-100K or ML-1M from `cfg.path` (downloading first if asked and empty).

    `seed` is unused (the files are the data); every source takes one.
    """
    del seed
    root = Path(cfg.path)
    variant = _resolve_variant(cfg.variant, root)
    if cfg.download and not any((root / f).is_file() for f in FILES[variant]):
        download_movielens(variant, root, cfg.base_url)
    _check_files(variant, root, auto=cfg.variant == "auto")
    reader = _read_100k if variant == "100k" else _read_1m
    ratings, items, users = reader(root)
    where = str(root / FILES[variant][0])
    impressions = validate_impressions(
        ratings.select(
            "user_id",
            "item_id",
            "timestamp",
            pl.lit(1, dtype=pl.Int8).alias("click"),
            (pl.col("rating") >= cfg.purchase_threshold).cast(pl.Int8).alias("purchase"),
            pl.col("rating").cast(pl.Float32),
        ),
        where,
    )
    return Dataset(
        impressions=impressions,
        items=validate_side_table(items, "item_id", str(root / FILES[variant][1]), impressions),
        users=validate_side_table(users, "user_id", str(root / FILES[variant][2]), impressions),
        positive_only=True,
        name=f"movielens-{variant}",
    )


# ---------------------------------------------------------------------- locating


def _resolve_variant(variant: str, root: Path) -> str:
    if variant in FILES:
        return variant
    if variant != "auto":
        raise RecsysError(
            f"unknown source.movielens.variant '{variant}'", fix="use '100k', '1m' or 'auto'"
        )
    if (root / "u.data").is_file():
        return "100k"
    if (root / "ratings.dat").is_file():
        return "1m"
    # Nothing there yet: a download fetches ML-1M only for a directory named like it.
    return "1m" if "1m" in root.name.lower() else "100k"


def _check_files(variant: str, root: Path, auto: bool) -> None:
    missing = [f for f in FILES[variant] if not (root / f).is_file()]
    if not missing:
        return
    get = (
        f"run `python ../shared/datasets/movielens100k.py {root}`"
        if variant == "100k"
        else f"download ml-1m.zip from https://grouplens.org/datasets/movielens/1m/ and unzip "
        f"its files into {root}"
    )
    if auto and len(missing) == len(FILES[variant]):
        what = (
            f"no MovieLens files in directory '{root}': expected {', '.join(FILES['100k'])} "
            f"(ML-100K) or {', '.join(FILES['1m'])} (ML-1M)"
        )
    else:
        what = f"MovieLens-{variant.upper()} file(s) {', '.join(missing)} missing in '{root}'"
    raise RecsysError(
        what,
        where="source.movielens.path",
        fix=f"{get}, or set source.movielens.download = true",
    )


# ----------------------------------------------------------------------- reading


def _text(path: Path) -> bytes:
    """File contents re-encoded from latin-1 (GroupLens's encoding) to UTF-8 for polars."""
    return path.read_bytes().decode("latin-1").encode("utf-8")


def _read_sep(path: Path, separator: str, names: list[str]) -> pl.DataFrame:
    """A headerless single-character-separated file, all columns as strings."""
    try:
        return pl.read_csv(
            io.BytesIO(_text(path)),
            separator=separator,
            has_header=False,
            new_columns=names,
            schema_overrides=dict.fromkeys(names, pl.String),
            quote_char=None,
            truncate_ragged_lines=True,
        ).filter(pl.col(names[0]).str.strip_chars() != "")
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(path, exc) from None


def _read_colons(path: Path, names: list[str]) -> pl.DataFrame:
    """A '::'-separated file (ML-1M): lines split by polars string ops, as strings."""
    lines = (
        pl.DataFrame({"line": [_text(path).decode("utf-8")]})
        .select(pl.col("line").str.split("\n"))
        .explode("line")
        .select(pl.col("line").str.strip_chars_end("\r"))
        .filter(pl.col("line").str.strip_chars() != "")
    )
    fields = pl.col("line").str.split_exact("::", len(names) - 1)
    return lines.select(fields.struct.rename_fields(names)).unnest("line")


def _unreadable(path: Path, exc: Exception) -> RecsysError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RecsysError(
        f"could not parse {path.name}: {reason}",
        where=str(path),
        fix="restore the original GroupLens file (re-extract the zip, or delete the "
        "directory's files and set source.movielens.download = true)",
    )


def _typed(frame: pl.DataFrame, path: Path, **dtypes: type[pl.DataType]) -> pl.DataFrame:
    try:
        return frame.with_columns(
            pl.col(c).str.strip_chars().cast(t, strict=True) for c, t in dtypes.items()
        )
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(path, exc) from None


def _ratings(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    return _typed(frame, path, user_id=pl.Int64, item_id=pl.Int64, rating=pl.Float32,
                  timestamp=pl.Int64)  # fmt: skip


def _year(*candidates: pl.Expr) -> pl.Expr:
    return pl.coalesce(candidates).cast(pl.Float32).alias("year")


def _read_100k(root: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ratings = _ratings(
        _read_sep(root / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"]),
        root / "u.data",
    )
    flags = [f"g{i}" for i in range(len(GENRES_100K))]
    raw = _read_sep(root / "u.item", "|", ["item_id", "title", "released", "video", "url", *flags])
    raw = _typed(raw, root / "u.item", item_id=pl.Int64)
    genre_names = [
        pl.when(pl.col(f).str.strip_chars() == "1").then(pl.lit(g))
        for f, g in zip(flags, GENRES_100K, strict=True)
    ]
    items = raw.select(
        "item_id",
        pl.concat_list(genre_names).list.drop_nulls().alias("genres"),
        _year(
            pl.col("released").str.extract(r"(\d{4})\s*$", 1),
            pl.col("title").str.extract(_TITLE_YEAR, 1),
        ),
    )
    users = _typed(
        _read_sep(root / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"]),
        root / "u.user",
        user_id=pl.Int64,
        age=pl.Float32,
    )
    return ratings, items, _user_features(users)


def _read_1m(root: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ratings = _ratings(
        _read_colons(root / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"]),
        root / "ratings.dat",
    )
    raw = _typed(
        _read_colons(root / "movies.dat", ["item_id", "title", "genres"]),
        root / "movies.dat",
        item_id=pl.Int64,
    )
    items = raw.select(
        "item_id",
        pl.col("genres")
        .str.strip_chars()
        .str.split("|")
        .list.eval(pl.element().filter(pl.element() != "")),
        _year(pl.col("title").str.strip_chars().str.extract(_TITLE_YEAR, 1)),
    )
    users = _typed(
        _read_colons(root / "users.dat", ["user_id", "gender", "age", "occupation", "zip"]),
        root / "users.dat",
        user_id=pl.Int64,
        age=pl.Float32,
    )
    code = pl.col("occupation").str.strip_chars()
    users = users.with_columns(
        code.replace_strict(
            [str(i) for i in range(len(OCCUPATIONS_1M))], OCCUPATIONS_1M, default=code
        ).alias("occupation")
    )
    return ratings, items, _user_features(users)


def _user_features(users: pl.DataFrame) -> pl.DataFrame:
    return users.select(
        "user_id",
        "age",
        pl.col("gender").str.strip_chars(),
        pl.col("occupation").str.strip_chars(),
        pl.col("zip").str.strip_chars().str.slice(0, 1).alias("zip_prefix"),
    )


# ---------------------------------------------------------------------- download


def download_movielens(
    variant: str, dest: Path, base_url: str, checksums: Mapping[str, str] | None = None
) -> None:
    """Fetch `{base_url}/ml-100k.zip` (or ml-1m.zip), verify its MD5, unpack into `dest`.

    The zip is downloaded and unpacked in a temporary directory next to `dest`; the
    files are renamed into `dest` only after the checksum matched, the ratings file
    last, so an interrupted run never leaves a directory that looks complete.
    `checksums` defaults to `CHECKSUMS`.
    """
    archive = ARCHIVES[variant]
    url = f"{base_url.rstrip('/')}/{archive}.zip"
    expected = (CHECKSUMS if checksums is None else checksums)[variant]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{archive}-") as tmp:
        zip_path = Path(tmp) / f"{archive}.zip"
        digest = _fetch(url, zip_path, dest)
        if digest != expected:
            raise RecsysError(
                f"the download from {url} has MD5 {digest}, expected {expected}; "
                "nothing was written",
                where=str(dest),
                fix="retry (the download may be truncated), check source.movielens.base_url, "
                "or download and unzip the archive yourself",
            )
        staged = Path(tmp) / "files"
        staged.mkdir()
        try:
            with zipfile.ZipFile(zip_path) as zf:
                for name in FILES[variant]:
                    (staged / name).write_bytes(zf.read(f"{archive}/{name}"))
        except (KeyError, zipfile.BadZipFile) as exc:
            raise RecsysError(
                f"{url} is not the expected MovieLens archive: {exc}",
                where=str(dest),
                fix="check source.movielens.base_url",
            ) from None
        dest.mkdir(parents=True, exist_ok=True)
        for name in reversed(FILES[variant]):
            os.replace(staged / name, dest / name)


def _fetch(url: str, path: Path, dest: Path) -> str:
    """Stream `url` into `path` with a progress bar; return the MD5 hex digest."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    md5.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        raise RecsysError(
            f"could not download {url}: {exc}",
            where=str(dest),
            fix="check the network and source.movielens.base_url, or download and unzip "
            f"the archive into {dest} yourself",
        ) from None
    return md5.hexdigest()
