"""ItemIndex: FAISS inner-product retrieval equals the numpy brute force on known data."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_mtl.errors import RecsysError
from recsys_mtl.retrieval.index import (
    ItemIndex,
    brute_force_topk,
    default_factory,
    ordered_topk,
)
from recsys_mtl.retrieval.quality import measure_quality, recall_at_k


def _csr(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    items = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
    return indptr, items


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(e[e >= 0])) for f, e in zip(found, exact, strict=True))
    return hits / int((exact >= 0).sum())


@pytest.fixture(scope="module")
def random_case() -> dict[str, np.ndarray]:
    """500 items, 40 users; exclusions include each user's true favourites."""
    rng = np.random.default_rng(7)
    n_items, dim, n_users = 500, 16, 40
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    users = rng.normal(size=(n_users, dim)).astype(np.float32)
    favourites = np.argsort(-(users @ items.T), axis=1)
    lists = []
    for u in range(n_users):
        if u == 0:  # more exclusions than k, covering the whole true top 50
            lists.append(favourites[u, :50])
        elif u == 1:  # all but 3 items excluded: 7 padded slots at k=10
            lists.append(favourites[u, 3:])
        elif u == 2:  # everything excluded
            lists.append(favourites[u])
        elif u == 3:  # nothing excluded
            lists.append(np.zeros(0, dtype=np.int64))
        else:
            random_items = rng.choice(n_items, size=rng.integers(0, 30), replace=False)
            lists.append(np.concatenate([favourites[u, :3], random_items]))
    lists = [np.unique(x) for x in lists]
    indptr, excluded = _csr(lists)
    return {"items": items, "users": users, "indptr": indptr, "excluded": excluded}


@pytest.fixture(scope="module")
def clustered_case() -> dict[str, np.ndarray]:
    """2000 items around 20 centres in 32-D; 100 users drawn near the same centres."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(20, 32)).astype(np.float32)
    items = centres[rng.integers(0, 20, size=2000)] + 0.3 * rng.normal(size=(2000, 32))
    users = centres[rng.integers(0, 20, size=100)] + 0.3 * rng.normal(size=(100, 32))
    return {"items": items.astype(np.float32), "users": users.astype(np.float32)}


@pytest.fixture(scope="module")
def gaussian_case() -> dict[str, np.ndarray]:
    """2000 items and 200 users, unclustered 16-D Gaussian: IVF must probe many lists."""
    rng = np.random.default_rng(5)
    items = rng.normal(size=(2000, 16)).astype(np.float32)
    return {"items": items, "users": rng.normal(size=(200, 16)).astype(np.float32)}


def test_hand_made_ranking_with_tie_and_exclusion() -> None:
    items = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    users = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    # user 3 is user 0 with item 0 excluded.
    indptr, excluded = _csr([[], [], [], [0]])
    expected_ids = np.array([[0, 2, 1], [1, 2, 0], [0, 1, 2], [2, 1, -1]])
    expected_scores = np.array(
        [[1.0, 0.5, 0.0], [2.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.0, -np.inf]],
        dtype=np.float32,
    )
    index = ItemIndex.build(items, "Flat")
    for scores, ids in (
        index.search(users, 3, indptr, excluded),
        brute_force_topk(users, items, 3, indptr, excluded),
    ):
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
        assert scores.dtype == np.float32 and ids.dtype == np.int64
    # k larger than the catalogue pads every row.
    scores, ids = index.search(users[:1], 5)
    np.testing.assert_array_equal(ids, [[0, 2, 1, -1, -1]])
    assert np.isneginf(scores[0, 3:]).all()


def test_hand_made_ties_at_the_cut_keep_lower_ids() -> None:
    items = np.ones((6, 2), dtype=np.float32)
    index = ItemIndex.build(items, "Flat")
    users = np.array([[1.0, 2.0]], dtype=np.float32)
    indptr, excluded = _csr([[1, 2]])
    for scores, ids in (
        index.search(users, 2, indptr, excluded),
        brute_force_topk(users, items, 2, indptr, excluded),
    ):
        np.testing.assert_array_equal(ids, [[0, 3]])
        np.testing.assert_allclose(scores, [[3.0, 3.0]])


@pytest.mark.parametrize("chunk_size", [4096, 7])
def test_flat_equals_brute_force_with_exclusions(random_case, chunk_size) -> None:
    c = random_case
    k = 10
    index = ItemIndex.build(c["items"], "Flat")
    assert (index.n_items, index.dim, index.factory) == (500, 16, "Flat")
    scores, ids = index.search(c["users"], k, c["indptr"], c["excluded"], chunk_size=chunk_size)
    exact_scores, exact_ids = brute_force_topk(
        c["users"], c["items"], k, c["indptr"], c["excluded"]
    )
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)

    # Known answers that do not rely on the reference.
    full = c["users"] @ c["items"].T
    order = np.argsort(-full, axis=1)
    np.testing.assert_array_equal(ids[0], order[0, 50:60])
    np.testing.assert_array_equal(ids[1, :3], order[1, :3])
    assert (ids[1, 3:] == -1).all() and np.isneginf(scores[1, 3:]).all()
    assert (ids[2] == -1).all() and np.isneginf(scores[2]).all()
    np.testing.assert_array_equal(ids[3], order[3, :10])
    for q in range(len(ids)):
        banned = set(c["excluded"][c["indptr"][q] : c["indptr"][q + 1]].tolist())
        assert banned.isdisjoint(ids[q].tolist())
        valid = ids[q] >= 0
        np.testing.assert_allclose(scores[q, valid], full[q, ids[q, valid]], atol=1e-5)
        assert (np.diff(scores[q, valid]) <= 0).all()


def test_no_exclusions_is_plain_top_k(random_case) -> None:
    c = random_case
    index = ItemIndex.build(c["items"], "Flat")
    _, ids = index.search(c["users"], 5)
    np.testing.assert_array_equal(ids, np.argsort(-(c["users"] @ c["items"].T), axis=1)[:, :5])


def test_hnsw_recall_on_clustered_data(clustered_case) -> None:
    c = clustered_case
    _, exact = brute_force_topk(c["users"], c["items"], 10)
    index = ItemIndex.build(c["items"], "HNSW32", ef_search=64)
    _, found = index.search(c["users"], 10)
    assert _recall(found, exact) >= 0.95


def test_ivf_probing_all_lists_is_exact(clustered_case) -> None:
    c = clustered_case
    rng = np.random.default_rng(3)
    lists = [rng.choice(2000, size=rng.integers(0, 40), replace=False) for _ in range(100)]
    indptr, excluded = _csr(lists)
    exact_scores, exact = brute_force_topk(c["users"], c["items"], 10, indptr, excluded)
    index = ItemIndex.build(c["items"], "IVF16,Flat", nprobe=16)
    scores, found = index.search(c["users"], 10, indptr, excluded)
    assert _recall(found, exact) == 1.0
    np.testing.assert_array_equal(found, exact)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-4)


def test_ivf_nprobe_is_applied(gaussian_case) -> None:
    # Unclustered data: probing 1 of 16 lists must miss true neighbours; all 16 cannot.
    c = gaussian_case
    _, exact = brute_force_topk(c["users"], c["items"], 10)
    _, one = ItemIndex.build(c["items"], "IVF16,Flat", nprobe=1).search(c["users"], 10)
    _, every = ItemIndex.build(c["items"], "IVF16,Flat", nprobe=16).search(c["users"], 10)
    assert _recall(one, exact) < 0.9
    assert _recall(every, exact) == 1.0


def test_ivf_pq_respects_exclusions(clustered_case) -> None:
    c = clustered_case
    indptr, excluded = _csr([np.arange(q, q + 20) for q in range(100)])
    index = ItemIndex.build(c["items"], "IVF16,PQ8", nprobe=16)
    _, found = index.search(c["users"], 10, indptr, excluded)
    _, exact = brute_force_topk(c["users"], c["items"], 10, indptr, excluded)
    assert ((found >= 0) & (found < 2000)).all()
    for q in range(100):
        assert set(range(q, q + 20)).isdisjoint(found[q].tolist())
    assert _recall(found, exact) >= 0.5


def test_save_load_round_trip(tmp_path, gaussian_case) -> None:
    c = gaussian_case
    index = ItemIndex.build(c["items"], "IVF16,Flat", nprobe=1)
    path = tmp_path / "items.faiss"
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.faiss", "items.json"]
    loaded = ItemIndex.load(path)
    assert (loaded.factory, loaded.dim, loaded.n_items) == ("IVF16,Flat", 16, 2000)
    before = index.search(c["users"], 10)
    after = loaded.search(c["users"], 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    # nprobe=1 survives the round trip: the loaded index still misses true neighbours.
    _, exact = brute_force_topk(c["users"], c["items"], 10)
    assert _recall(after[1], exact) < 0.9


def test_load_corrupt_or_missing_file_names_it(tmp_path, random_case) -> None:
    path = tmp_path / "items.faiss"
    with pytest.raises(RecsysError, match=r"items\.faiss"):
        ItemIndex.load(path)
    ItemIndex.build(random_case["items"], "Flat").save(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RecsysError, match=r"items\.faiss.*Fix"):
        ItemIndex.load(path)
    path.write_bytes(b"not a faiss index at all")
    with pytest.raises(RecsysError, match=r"items\.faiss"):
        ItemIndex.load(path)
    path.write_bytes(whole)
    (tmp_path / "items.json").write_text("{ broken")
    with pytest.raises(RecsysError, match=r"items\.json"):
        ItemIndex.load(path)


@pytest.mark.parametrize("factory", ["bogus", "IVF16,Bogus", "", "IVF4,PQ5"])
def test_bad_factory_string(factory) -> None:
    items = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    with pytest.raises(RecsysError, match="'Flat', 'HNSW32'"):
        ItemIndex.build(items, factory)


def test_more_ivf_lists_than_items() -> None:
    items = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    with pytest.raises(RecsysError, match="256 IVF lists but there are only 50 items"):
        ItemIndex.build(items, "IVF256,Flat")


def test_search_parameter_for_wrong_index_kind() -> None:
    items = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    with pytest.raises(RecsysError, match="nprobe applies to IVF"):
        ItemIndex.build(items, "Flat", nprobe=4)


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(random_case, k) -> None:
    index = ItemIndex.build(random_case["items"], "Flat")
    with pytest.raises(RecsysError, match="k must be a positive integer"):
        index.search(random_case["users"], k)
    with pytest.raises(RecsysError, match="k must be a positive integer"):
        brute_force_topk(random_case["users"], random_case["items"], k)


def test_bad_vectors_are_rejected(random_case) -> None:
    items = random_case["items"].copy()
    items[17, 3] = np.nan
    with pytest.raises(RecsysError, match=r"NaN.*\[17\]"):
        ItemIndex.build(items, "Flat")
    with pytest.raises(RecsysError, match="2-D float"):
        ItemIndex.build(random_case["items"][0], "Flat")
    with pytest.raises(RecsysError, match="2-D float"):
        ItemIndex.build(np.ones((4, 2), dtype=np.int64), "Flat")
    index = ItemIndex.build(random_case["items"], "Flat")
    users = random_case["users"].copy()
    users[0, 0] = np.nan
    with pytest.raises(RecsysError, match="NaN"):
        index.search(users, 5)
    with pytest.raises(RecsysError, match="dimension 8, expected 16"):
        index.search(random_case["users"][:, :8], 5)


def test_bad_exclusions_are_rejected(random_case) -> None:
    index = ItemIndex.build(random_case["items"], "Flat")
    users = random_case["users"][:2]
    with pytest.raises(RecsysError, match="given together"):
        index.search(users, 5, exclude_indptr=np.array([0, 0, 0]))
    with pytest.raises(RecsysError, match="exclude_indptr must have 3"):
        index.search(users, 5, np.array([0, 1]), np.array([4]))
    with pytest.raises(RecsysError, match="outside"):
        index.search(users, 5, np.array([0, 1, 1]), np.array([500]))


def test_train_seed_makes_ivf_reproducible(gaussian_case) -> None:
    c = gaussian_case
    first = ItemIndex.build(c["items"], "IVF16,Flat", nprobe=1, train_seed=1).search(c["users"], 10)
    again = ItemIndex.build(c["items"], "IVF16,Flat", nprobe=1, train_seed=1).search(c["users"], 10)
    other = ItemIndex.build(c["items"], "IVF16,Flat", nprobe=1, train_seed=2).search(c["users"], 10)
    np.testing.assert_array_equal(first[1], again[1])
    assert (first[1] != other[1]).any()


# ---------------------------------------------------------------------------- index choice


@pytest.mark.parametrize(
    ("n_items", "factory"),
    [(1, "Flat"), (100_000, "Flat"), (200_000, "IVF2048,SQ8"), (1_000_000, "IVF4096,SQ8")],
)
def test_default_factory_by_catalogue_size(n_items, factory) -> None:
    # 4 sqrt(N) lists rounded to a power of two: 4 * 447 = 1789 -> 2048; 4000 -> 4096
    assert default_factory(n_items) == factory


def test_auto_builds_an_exact_index_for_a_small_catalogue(random_case) -> None:
    c = random_case
    index = ItemIndex.build(c["items"], "auto")
    assert index.factory == "Flat" and index.search_parameter is None
    _, ids = index.search(c["users"], 10, c["indptr"], c["excluded"])
    _, exact = brute_force_topk(c["users"], c["items"], 10, c["indptr"], c["excluded"])
    np.testing.assert_array_equal(ids, exact)


def test_one_user_with_many_exclusions_does_not_change_the_others(clustered_case) -> None:
    # User 0 excludes 1500 of 2000 items; the others exclude 2. Grouped over-fetching
    # must give every user exactly the brute-force answer.
    c = clustered_case
    order = np.argsort(-(c["users"] @ c["items"].T), axis=1)
    lists = [order[0, :1500]] + [order[q, :2] for q in range(1, 100)]
    indptr, excluded = _csr([np.sort(x) for x in lists])
    index = ItemIndex.build(c["items"], "Flat")
    for chunk_size in (4096, 3):
        scores, ids = index.search(c["users"], 10, indptr, excluded, chunk_size=chunk_size)
        exact_scores, exact = brute_force_topk(c["users"], c["items"], 10, indptr, excluded)
        np.testing.assert_array_equal(ids, exact)
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    np.testing.assert_array_equal(ids[0], order[0, 1500:1510])
    np.testing.assert_array_equal(ids[1], order[1, 2:12])


def test_search_parameter_knobs(tmp_path, gaussian_case) -> None:
    items = gaussian_case["items"]
    flat = ItemIndex.build(items, "Flat")
    assert (flat.search_parameter, flat.search_value, flat.search_values()) == (None, None, [])
    with pytest.raises(RecsysError, match="no search parameter"):
        flat.set_search_value(4)
    ivf = ItemIndex.build(items, "IVF16,Flat")
    assert ivf.search_parameter == "nprobe" and ivf.search_values() == [1, 2, 4, 8, 16]
    ivf.set_search_value(8)
    ivf.save(tmp_path / "ivf.faiss")
    assert ItemIndex.load(tmp_path / "ivf.faiss").search_value == 8
    hnsw = ItemIndex.build(items, "HNSW16", ef_search=40)
    assert (hnsw.search_parameter, hnsw.search_value) == ("efSearch", 40)
    assert hnsw.search_values()[0] == 16


# ---------------------------------------------------------------------------- quality report


def test_recall_at_k_hand_computed() -> None:
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    found = np.array([[3, 2, 9, -1], [4, 5, 6, 7]])
    assert recall_at_k(found, exact) == pytest.approx((2 + 4) / 8)


def test_quality_of_an_exact_index_is_one_point_at_recall_one(clustered_case) -> None:
    c = clustered_case
    report = measure_quality(ItemIndex.build(c["items"], "Flat"), c["items"], c["users"], k=20)
    assert len(report.points) == 1 and report.chosen.recall == 1.0
    assert report.chosen.parameter is None and report.chosen.queries_per_second > 0


def test_quality_sweep_tunes_nprobe_to_the_target(gaussian_case) -> None:
    # Unclustered data: recall rises with nprobe and reaches 1 with all 16 lists.
    c = gaussian_case
    index = ItemIndex.build(c["items"], "IVF16,Flat")
    report = measure_quality(index, c["items"], c["users"], k=10, target_recall=0.9)
    recalls = [p.recall for p in report.points]
    assert [p.value for p in report.points] == [1, 2, 4, 8, 16][: len(recalls)]
    assert recalls[0] < 0.9 and recalls == sorted(recalls)
    assert report.chosen.recall >= 0.9
    assert all(p.recall < 0.9 for p in report.points if p.value < report.chosen.value)
    assert index.search_value == report.chosen.value  # the index keeps the chosen value
    _, exact = brute_force_topk(c["users"], c["items"], 10)
    _, found = index.search(c["users"], 10)
    assert _recall(found, exact) == pytest.approx(report.chosen.recall, abs=1e-9)
    assert report.metrics()["index/recall_at_10"] == report.chosen.recall


def test_ordered_topk_equals_brute_force_on_one_shared_score(random_case) -> None:
    # One score per item (with ties) shared by every query: a popularity ranking.
    c = random_case
    scores = np.random.default_rng(1).integers(0, 50, 500).astype(np.float32)
    order = np.lexsort((np.arange(500), -scores))
    n_queries = len(c["indptr"]) - 1
    for k in (1, 10, 600):
        found = ordered_topk(order, n_queries, k, c["indptr"], c["excluded"])
        _, exact = brute_force_topk(
            np.ones((n_queries, 1), np.float32), scores[:, None], k, c["indptr"], c["excluded"]
        )
        np.testing.assert_array_equal(found, exact)
    np.testing.assert_array_equal(ordered_topk(order, 2, 3), [order[:3], order[:3]])
