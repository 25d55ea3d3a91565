"""MovieLens readers on tiny hand-written GroupLens files, and the checksum-verified download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from recsys_mtl.config import MovieLensSource
from recsys_mtl.data import movielens
from recsys_mtl.data.movielens import load_movielens
from recsys_mtl.errors import RecsysError


def flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in movielens.GENRES_100K)


TOY_STORY = flags("Animation", "Children's", "Comedy")
ML100K = {
    "u.data": (
        "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n2\t40\t1\t881250952\n"
    ),
    "u.item": (
        f"10|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/x|{TOY_STORY}\n"
        f"20|Misérables, Les (1995)|15-Mar-1996||http://us.imdb.com/y|{flags('Drama')}\n"
        f"30|unknown||||{flags('unknown')}\n"
        f"40|Café Society (1997)||||{flags('Romance', 'Drama')}\n"
    ),
    "u.user": "1|24|M|technician|85711\n2|53|F|other|T8H1N\n",
}
ML1M = {
    "ratings.dat": "1::1193::5::978300760\n1::2::3::978302109\n6040::2::4::956703932\n",
    "movies.dat": (
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "2::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
    ),
    "users.dat": "1::F::1::10::48067\n6040::M::25::6::11106\n",
}


def write_files(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_bytes(text.encode("latin-1"))
    return root


def test_ml100k_exact_output(tmp_path: Path) -> None:
    root = write_files(tmp_path / "ml-100k", ML100K)
    ds = load_movielens(MovieLensSource(path=str(root), purchase_threshold=4.0), seed=0)
    assert ds.name == "movielens-100k" and ds.positive_only
    imp = ds.impressions
    assert imp.schema == pl.Schema(
        {
            "user_id": pl.Int64,
            "item_id": pl.Int64,
            "timestamp": pl.Int64,
            "click": pl.Int8,
            "purchase": pl.Int8,
            "rating": pl.Float32,
        }
    )
    assert imp.rows() == [
        (1, 10, 881250949, 1, 1, 5.0),
        (1, 20, 881250950, 1, 0, 3.0),
        (2, 10, 881250951, 1, 1, 4.0),
        (2, 40, 881250952, 1, 0, 1.0),
    ]
    assert ds.items is not None and ds.items.schema == pl.Schema(
        {"item_id": pl.Int64, "genres": pl.List(pl.String), "year": pl.Float32}
    )
    assert ds.items.rows() == [
        (10, ["Animation", "Children's", "Comedy"], 1995.0),
        (20, ["Drama"], 1996.0),  # release date wins over the title's year
        (30, ["unknown"], None),
        (40, ["Drama", "Romance"], 1997.0),  # no date: year from the title
    ]
    assert ds.users is not None and ds.users.rows() == [
        (1, 24.0, "M", "technician", "8"),
        (2, 53.0, "F", "other", "T"),
    ]
    assert ds.users.columns == ["user_id", "age", "gender", "occupation", "zip_prefix"]


def test_purchase_threshold_is_configurable(tmp_path: Path) -> None:
    root = write_files(tmp_path / "ml", ML100K)
    ds = load_movielens(MovieLensSource(path=str(root), purchase_threshold=3.0), seed=0)
    assert ds.impressions["purchase"].to_list() == [1, 1, 1, 0]


def test_ml1m_exact_output(tmp_path: Path) -> None:
    root = write_files(tmp_path / "ml-1m", ML1M)
    ds = load_movielens(MovieLensSource(path=str(root)), seed=0)
    assert ds.name == "movielens-1m" and ds.positive_only
    assert ds.impressions.rows() == [
        (1, 1193, 978300760, 1, 1, 5.0),
        (1, 2, 978302109, 1, 0, 3.0),
        (6040, 2, 956703932, 1, 1, 4.0),
    ]
    assert ds.impressions.schema["rating"] == pl.Float32
    assert ds.items is not None and ds.items.rows() == [
        (1193, ["Drama"], 1975.0),
        (2, ["Comedy", "Romance"], 2001.0),
    ]
    assert ds.items.schema["genres"] == pl.List(pl.String)
    assert ds.users is not None and ds.users.rows() == [
        (1, 1.0, "F", "K-12 student", "4"),
        (6040, 25.0, "M", "doctor/health care", "1"),
    ]


def test_variant_can_be_forced(tmp_path: Path) -> None:
    root = write_files(tmp_path / "both", {**ML100K, **ML1M})
    assert load_movielens(MovieLensSource(path=str(root)), 0).name == "movielens-100k"
    forced = load_movielens(MovieLensSource(path=str(root), variant="1m"), 0)
    assert forced.name == "movielens-1m"


def test_missing_files_error(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(RecsysError) as info:
        load_movielens(MovieLensSource(path=str(root)), 0)
    message = str(info.value)
    assert f"no MovieLens files in directory '{root}'" in message
    assert "u.data" in message and "ratings.dat" in message
    assert f"Fix: run `python ../shared/datasets/movielens100k.py {root}`" in message
    assert "source.movielens.download = true" in message


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    root = write_files(tmp_path / "partial", {"u.data": ML100K["u.data"]})
    with pytest.raises(RecsysError, match=r"file\(s\) u\.item, u\.user missing in .*partial"):
        load_movielens(MovieLensSource(path=str(root)), 0)


def test_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match=r"unknown source\.movielens\.variant '10m'"):
        load_movielens(MovieLensSource(path=str(tmp_path), variant="10m"), 0)


def test_malformed_file_is_reported(tmp_path: Path) -> None:
    root = write_files(tmp_path / "bad", {**ML100K, "u.data": "1\tten\t5\t881250949\n"})
    with pytest.raises(RecsysError, match=r"could not parse u\.data: .*'item_id'.*Fix:"):
        load_movielens(MovieLensSource(path=str(root)), 0)


# ---------------------------------------------------------------------- download


def build_zip(folder: str, files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{folder}/README", "tiny test archive")
        for name, text in files.items():
            zf.writestr(f"{folder}/{name}", text.encode("latin-1"))
    return buffer.getvalue()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a fresh folder; yields (base_url, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("variant", "folder", "files"), [("100k", "ml-100k", ML100K), ("1m", "ml-1m", ML1M)]
)
def test_download_success(
    server: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variant: str,
    folder: str,
    files: dict[str, str],
) -> None:
    base_url, served = server
    archive = build_zip(folder, files)
    (served / f"{folder}.zip").write_bytes(archive)
    monkeypatch.setitem(movielens.CHECKSUMS, variant, hashlib.md5(archive).hexdigest())
    dest = tmp_path / "data" / folder  # does not exist yet; 'auto' goes by its name
    cfg = MovieLensSource(path=str(dest), download=True, base_url=base_url)
    ds = load_movielens(cfg, 0)
    assert ds.name == f"movielens-{variant}"
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    assert [p.name for p in (tmp_path / "data").iterdir()] == [folder]  # no temp leftovers
    assert ds.impressions.height == len(files[movielens.FILES[variant][0]].splitlines())


def test_download_checksum_mismatch_writes_nothing(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, served = server
    (served / "ml-100k.zip").write_bytes(build_zip("ml-100k", ML100K))
    monkeypatch.setitem(movielens.CHECKSUMS, "100k", "0" * 32)
    dest = tmp_path / "data" / "ml-100k"
    dest.mkdir(parents=True)
    cfg = MovieLensSource(path=str(dest), download=True, base_url=base_url)
    with pytest.raises(RecsysError, match=r"has MD5 [0-9a-f]{32}, expected 0{32}.*Fix: retry"):
        load_movielens(cfg, 0)
    assert list(dest.iterdir()) == []
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ml-100k"]


def test_download_http_error(server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = server  # serves nothing: 404
    cfg = MovieLensSource(path=str(tmp_path / "ml-100k"), download=True, base_url=base_url)
    with pytest.raises(RecsysError, match=r"could not download .*ml-100k\.zip.*404.*Fix:"):
        load_movielens(cfg, 0)
    assert not (tmp_path / "ml-100k").exists()


def test_no_download_when_files_exist(tmp_path: Path) -> None:
    root = write_files(tmp_path / "ml-100k", ML100K)
    cfg = MovieLensSource(path=str(root), download=True, base_url="http://127.0.0.1:9")
    assert load_movielens(cfg, 0).impressions.height == 4  # no request made


def test_official_checksums() -> None:
    assert movielens.CHECKSUMS == {
        "100k": "0e33842e24a9c977be4e0107933c0723",
        "1m": "c4d9eecfca2ab87c1945afe126590906",
    }


# --------------------------------------------------------------------- real data

REAL_100K = Path("/tmp/ml100k")


@pytest.mark.skipif(not (REAL_100K / "u.data").exists(), reason="real ML-100K not in /tmp/ml100k")
def test_real_ml100k() -> None:
    ds = load_movielens(MovieLensSource(path=str(REAL_100K)), 0)
    assert ds.impressions.height == 100_000
    assert ds.impressions["user_id"].n_unique() == 943
    assert ds.impressions["item_id"].n_unique() == 1682
    assert ds.items is not None and ds.items.height == 1682
    assert ds.users is not None and ds.users.height == 943
    assert ds.impressions["rating"].is_between(1, 5).all()
