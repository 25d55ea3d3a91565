"""The recommender bundle: FAISS retrieval equals brute force over the click logits, fusion
re-ranking, unknown ids, persistence with integrity checks, and predict()."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from recsys_mtl.config import PipelineConfig, config_from_dict
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import FeatureSet
from recsys_mtl.features.vocab import FIRST
from recsys_mtl.pipeline import Paths, features_stage, index_stage, train_stage
from recsys_mtl.recommender import Recommender, csr_rows
from recsys_mtl.training.tensors import TensorData, predict_arrays

K = 8
CLICK_ONLY = {"click": 1.0, "purchase": 0.0, "rating": 0.0}
HEAD_COLUMNS = ["p_click", "p_purchase", "p_purchase_given_click", "rating_pred"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[PipelineConfig, FeatureSet, Recommender]:
    root = tmp_path_factory.mktemp("recommender")
    config = config_from_dict(
        {
            "pipeline": {"output_dir": str(root / "run"), "seed": 5},
            "source": {"synthetic": {"n_users": 120, "n_items": 60, "impressions_per_user": 40}},
            "model": {"embedding_dim": 8, "hidden_dims": [16], "output_dim": 8},
            "training": {"epochs": 3, "batch_size": 256, "learning_rate": 0.01, "progress": False},
            "retrieval": {"index": "Flat", "candidates": 20},
            "tracking": {"enabled": False},
        }
    )
    features = features_stage(config)
    recommender, _ = train_stage(config, features)
    index_stage(config, recommender)
    return config, features, recommender


@pytest.fixture(scope="module")
def some_users(trained) -> list[int]:
    _, features, _ = trained
    return features.test["user_id"].unique(maintain_order=True).head(15).to_list()


def _seen(features: FeatureSet) -> dict[int, set[int]]:
    """Raw user id -> raw item ids clicked anywhere in the input: train, validation and
    test (the bundle knows every event it was given; the reference)."""
    rows = pl.concat(
        [features.train, features.validation, features.test], how="diagonal_relaxed"
    ).filter(pl.col("click") == 1)
    out: dict[int, set[int]] = {}
    for user, item in rows.select("user_id", "item_id").iter_rows():
        out.setdefault(user, set()).add(item)
    return out


def _brute_force(
    recommender: Recommender, features: FeatureSet, users: list[int], k: int
) -> tuple[np.ndarray, torch.Tensor]:
    """Top-k item rows (item index - 2) per user by click logit, computed with torch from
    the model, seen items excluded; ties go to the lower item index. Also the logits."""
    logits = (
        torch.from_numpy(recommender.user_vectors(pl.Series(users)))
        @ torch.from_numpy(recommender.item_vectors()).T
    )
    masked = logits.clone()
    seen = _seen(features)
    encode = recommender.transform.items.ids.encode
    for row, user in enumerate(users):
        items = encode(pl.Series(sorted(seen.get(user, set())), dtype=pl.Int64)).to_numpy()
        masked[row, items[items >= FIRST] - FIRST] = float("-inf")
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    return order.numpy(), logits


# ---------------------------------------------------------------------------- retrieval


def test_faiss_candidates_equal_brute_force(trained, some_users) -> None:
    _, features, recommender = trained
    n = recommender.retrieval.candidates
    expected, logits = _brute_force(recommender, features, some_users, n)
    user_idx = recommender.transform.users.ids.encode(pl.Series(some_users)).to_numpy()
    vectors = recommender.user_vectors(pl.Series(some_users))
    indptr, seen = csr_rows(recommender.seen_indptr, recommender.seen_items, user_idx)
    scores, found = recommender.index.search(vectors, n, indptr, seen - FIRST)
    assert logits.std() > 0.05  # a model that actually discriminates items
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(
        scores, np.take_along_axis(logits.numpy(), expected, axis=1), atol=1e-5
    )


def test_click_only_fusion_returns_brute_force_top_k(trained, some_users) -> None:
    _, features, recommender = trained
    expected, _ = _brute_force(recommender, features, some_users, K)
    out = recommender.recommend(some_users, k=K, fusion=CLICK_ONLY)
    assert out.columns[:4] == ["user_id", "rank", "item_id", "score"]
    assert out.height == K * len(some_users)
    decode = recommender.transform.items.ids.decode
    seen = _seen(features)
    for row, user in enumerate(some_users):
        mine = out.filter(pl.col("user_id") == user)
        assert mine["rank"].to_list() == list(range(1, K + 1))
        assert mine["item_id"].to_list() == decode(expected[row] + FIRST).to_list()
        assert not set(mine["item_id"].to_list()) & seen.get(user, set())
        np.testing.assert_allclose(mine["score"].to_numpy(), mine["p_click"].to_numpy(), rtol=1e-5)
    assert any(seen.get(user) for user in some_users)  # exclusion was exercised


def test_exclude_seen_false_may_return_seen_items(trained, some_users) -> None:
    _, features, recommender = trained
    out = recommender.recommend(some_users, k=K, fusion=CLICK_ONLY, exclude_seen=False)
    seen = _seen(features)
    assert any(
        set(out.filter(pl.col("user_id") == u)["item_id"].to_list()) & seen.get(u, set())
        for u in some_users
    )


def test_head_columns_equal_predict(trained, some_users) -> None:
    _, _, recommender = trained
    out = recommender.recommend(some_users, k=K)
    predicted = recommender.predict(out.select("user_id", "item_id"))
    assert predicted.columns == HEAD_COLUMNS
    for column in HEAD_COLUMNS:
        np.testing.assert_allclose(
            out[column].to_numpy(), predicted[column].to_numpy(), rtol=1e-5, atol=1e-6
        )


def test_predict_equals_the_training_path(trained) -> None:
    config, features, recommender = trained
    """predict() serves rows from the serving state; given the same row features, the
    training path (TensorData -> model) gives the same numbers."""
    transform = recommender.transform
    frame = features.test.head(200).select("user_id", "item_id", "timestamp")
    state = pl.concat(
        [transform.serving_rows(frame, "user"), transform.serving_rows(frame, "item")],
        how="horizontal",
    )
    encoded = transform.encode_pairs(pl.concat([frame, state], how="horizontal"))
    data = TensorData.from_frame(encoded, config.tasks, transform)
    reference = predict_arrays(recommender.model, data)
    predicted = recommender.predict(frame)
    for column in HEAD_COLUMNS:
        np.testing.assert_allclose(
            predicted[column].to_numpy(), reference[column], rtol=1e-5, atol=1e-6
        )


# ---------------------------------------------------------------------------- fusion


def test_fusion_weights_per_request(trained, some_users) -> None:
    _, _, recommender = trained
    click_only = recommender.recommend(some_users, k=K, fusion=CLICK_ONLY)
    both = recommender.recommend(some_users, k=K, fusion={"click": 1.0, "purchase": 1.0})
    np.testing.assert_allclose(
        both["score"].to_numpy(),
        (both["p_click"] * both["p_purchase"]).to_numpy(),
        rtol=1e-5,
    )
    purchase = recommender.recommend(some_users, k=K, fusion={"click": 0.0, "purchase": 1.0})
    np.testing.assert_allclose(
        purchase["score"].to_numpy(), purchase["p_purchase"].to_numpy(), rtol=1e-5
    )
    rating = recommender.recommend(
        some_users, k=K, fusion={"click": 0.0, "purchase": 0.0, "rating": 1.0}
    )
    np.testing.assert_allclose(
        rating["score"].to_numpy(), (rating["rating_pred"] / 5.0).to_numpy(), rtol=1e-5
    )
    for frame in (both, purchase, rating):
        for user in some_users:
            scores = frame.filter(pl.col("user_id") == user)["score"].to_numpy()
            assert (np.diff(scores) <= 0).all()
    # the weights change the order for some user
    assert click_only["item_id"].to_list() != both["item_id"].to_list()
    with pytest.raises(RecsysError, match="unknown tasks"):
        recommender.recommend(some_users, k=K, fusion={"clicks": 1.0})


# ---------------------------------------------------------------------------- unknown ids


def test_unknown_user_is_served(trained, some_users) -> None:
    _, _, recommender = trained
    out = recommender.recommend([10**9, some_users[0]], k=5)
    stranger = out.filter(pl.col("user_id") == 10**9)
    assert stranger.height == 5
    assert stranger["rank"].to_list() == [1, 2, 3, 4, 5]
    assert stranger["item_id"].null_count() == 0
    assert stranger["item_id"].n_unique() == 5
    assert out.filter(pl.col("user_id") == some_users[0]).height == 5


def test_unknown_items_get_finite_predictions(trained, some_users) -> None:
    _, _, recommender = trained
    frame = pl.DataFrame({"user_id": [some_users[0], 10**9], "item_id": [10**9, 10**9 + 1]})
    predicted = recommender.predict(frame)
    assert predicted.height == 2
    for column in HEAD_COLUMNS:
        assert np.isfinite(predicted[column].to_numpy()).all()
    assert ((predicted["p_click"] > 0) & (predicted["p_click"] < 1)).all()


def test_wrong_id_type_and_bad_k_are_errors(trained, some_users) -> None:
    _, _, recommender = trained
    with pytest.raises(RecsysError, match="user_id"):
        recommender.recommend(["abc"], k=3)
    with pytest.raises(RecsysError, match="user_id"):
        recommender.predict(pl.DataFrame({"user_id": ["abc"], "item_id": [1]}))
    with pytest.raises(RecsysError, match="item_id"):
        recommender.predict(pl.DataFrame({"user_id": [some_users[0]], "item_id": ["x"]}))
    with pytest.raises(RecsysError, match="column 'item_id' is missing"):
        recommender.predict(pl.DataFrame({"user_id": [some_users[0]]}))
    for k in (0, -3):
        with pytest.raises(RecsysError, match="k must be positive"):
            recommender.recommend(some_users[:2], k=k)


# ---------------------------------------------------------------------------- persistence


def test_save_load_round_trip(trained, some_users, tmp_path: Path) -> None:
    config, features, recommender = trained
    recommender.save(tmp_path / "bundle")
    for folder in (tmp_path / "bundle", Paths(config.output_path).model):
        loaded = Recommender.load(folder)
        assert loaded.index is not None
        frame = features.test.select("user_id", "item_id").head(100)
        assert_frame_equal(loaded.predict(frame), recommender.predict(frame))
        for fusion in (None, CLICK_ONLY):
            assert_frame_equal(
                loaded.recommend([*some_users, 10**9], k=K, fusion=fusion),
                recommender.recommend([*some_users, 10**9], k=K, fusion=fusion),
            )


def test_corrupted_model_file_is_refused(trained, tmp_path: Path) -> None:
    config, _, _ = trained
    folder = tmp_path / "bundle"
    shutil.copytree(Paths(config.output_path).model, folder)
    path = folder / "model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecsysError, match=r"model\.pt") as info:
        Recommender.load(folder)
    assert str(folder) in str(info.value)
    with pytest.raises(RecsysError, match=r"no manifest\.json"):
        Recommender.load(tmp_path / "nothing")


class _Payload:
    """A pickle that runs code when unpickled: it would create the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_a_bundle_with_a_code_running_pickle_is_refused_without_running_it(
    trained, tmp_path: Path
) -> None:
    """model.pt replaced by a pickle that runs code, with the manifest's hash updated to
    match (as a tampered bundle would be): loading refuses it and runs nothing."""
    config, _, _ = trained
    folder = tmp_path / "bundle"
    shutil.copytree(Paths(config.output_path).model, folder)
    marker = tmp_path / "code-ran"
    torch.save({"weights": _Payload(marker)}, folder / "model.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.pt"] = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecsysError, match=r"model\.pt.*not plain tensors") as info:
        Recommender.load(folder)
    assert str(folder) in str(info.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------- predict inputs


def test_predict_accepts_pandas_and_polars_and_keeps_order(trained) -> None:
    _, features, recommender = trained
    frame = features.test.select("user_id", "item_id").head(60)
    expected = recommender.predict(frame)
    assert expected.height == 60
    assert expected["p_click"].n_unique() > 30  # rows really differ, so order is visible
    permutation = np.random.default_rng(0).permutation(60)
    shuffled = recommender.predict(frame[permutation])
    assert_frame_equal(shuffled, expected[permutation])
    assert_frame_equal(recommender.predict(frame.to_pandas()), expected)
    assert_frame_equal(recommender.predict(frame.lazy()), expected)
    assert_frame_equal(
        recommender.predict(frame.to_pandas().iloc[permutation]), expected[permutation]
    )
    with pytest.raises(RecsysError, match="expected a polars or pandas DataFrame"):
        recommender.predict([(1, 2)])


def test_user_vectors_are_served_as_of_the_request_time(trained, some_users) -> None:
    """Without a timestamp, a request is served at the state's reference time; with one,
    the recency of the user's previous event is measured from it."""
    _, _, recommender = trained
    users = pl.Series("user_id", some_users)
    reference = recommender.transform.history.spec.reference_time

    def at(seconds: int) -> np.ndarray:
        times = pl.Series("timestamp", [seconds] * users.len(), dtype=pl.Int64)
        return recommender.user_vectors(pl.DataFrame([users, times]))

    np.testing.assert_array_equal(recommender.user_vectors(users), at(reference))
    assert not np.allclose(at(reference + 90 * 86_400), at(reference))


# ---------------------------------------------------------------------------- cold users


def test_unknown_user_without_features_gets_the_most_popular_items(trained) -> None:
    _, features, recommender = trained
    out = recommender.recommend([10**9], k=5)
    assert out["source"].to_list() == ["popularity"] * 5
    # popularity = clicks of every event the bundle holds (the seen items), ties to the
    # lower index
    clicks = (
        pl.concat([features.train, features.validation, features.test], how="diagonal_relaxed")
        .filter(pl.col("click") == 1)
        .unique(["user_id", "item_id"])
        .group_by("item_id")
        .len()
    )
    encode = recommender.transform.items.ids.encode
    clicks = clicks.with_columns(encode(clicks["item_id"]).alias("idx")).sort(
        ["len", "idx"], descending=[True, False]
    )
    assert out["item_id"].to_list() == clicks["item_id"].head(5).to_list()
    total = clicks["len"].sum()
    np.testing.assert_allclose(out["score"].to_numpy(), clicks["len"].head(5) / total, rtol=1e-6)
    for column in HEAD_COLUMNS:  # each head still scores the items
        assert np.isfinite(out[column].to_numpy()).all()
    # exclusions apply to popularity users too
    top = out["item_id"].head(2).to_list()
    skipped = recommender.recommend([10**9], k=3, exclude_items=top)
    assert skipped["item_id"].to_list() == clicks["item_id"].slice(2, 3).to_list()


def test_unknown_user_with_side_features_is_served_from_them(trained, some_users) -> None:
    _, _, recommender = trained
    stranger = pl.DataFrame({"user_id": [10**9, 10**9 + 1], "segment": ["segment_0", "segment_1"]})
    out = recommender.recommend(stranger, k=K, fusion=CLICK_ONLY)
    assert set(out["source"].to_list()) == {"side_features"}
    vectors = recommender.user_vectors(stranger)
    assert not np.allclose(vectors[0], vectors[1])  # the segment reaches the vector
    # the candidates are the index's top items for that vector
    scores = vectors @ recommender.item_vectors().T
    decode = recommender.transform.items.ids.decode
    for row, user in enumerate(stranger["user_id"]):
        best = np.argsort(-scores[row], kind="stable")[:K] + FIRST
        assert out.filter(pl.col("user_id") == user)["item_id"].to_list() == decode(best).to_list()
    known = recommender.recommend(some_users[:2], k=K)
    assert set(known["source"].to_list()) == {"model"}


# ---------------------------------------------------------------------------- exclusions


def test_per_request_exclusions_shared_and_per_user(trained, some_users, caplog) -> None:
    _, _, recommender = trained
    users = some_users[:3]
    # click-only fusion: items the exclusions bring in rank below every kept candidate
    plain = recommender.recommend(users, k=K, fusion=CLICK_ONLY)
    first = plain.filter(pl.col("user_id") == users[0])["item_id"].to_list()
    second = plain.filter(pl.col("user_id") == users[1])["item_id"].to_list()
    shared = recommender.recommend(users, k=K, fusion=CLICK_ONLY, exclude_items=[first[0], 10**9])
    assert first[0] not in shared["item_id"].to_list()
    assert "unknown item ids ignored" in caplog.text and str(10**9) in caplog.text
    # the other items keep their order: the list is the plain one without the excluded
    mine = shared.filter(pl.col("user_id") == users[0])["item_id"].to_list()
    assert mine[: K - 1] == first[1:]

    request = pl.DataFrame(
        {"user_id": users, "exclude_items": [first[:2], second[:1], []]},
        schema_overrides={"exclude_items": pl.List(pl.Int64)},
    )
    per_user = recommender.recommend(request, k=K, fusion=CLICK_ONLY)
    assert (
        per_user.filter(pl.col("user_id") == users[0])["item_id"].head(K - 2).to_list()
        == (first[2:])
    )
    assert (
        per_user.filter(pl.col("user_id") == users[1])["item_id"].head(K - 1).to_list()
        == (second[1:])
    )
    assert_frame_equal(
        per_user.filter(pl.col("user_id") == users[2]), plain.filter(pl.col("user_id") == users[2])
    )
    with pytest.raises(RecsysError, match="list of item ids per user"):
        recommender.recommend(pl.DataFrame({"user_id": users, "exclude_items": [1, 2, 3]}), k=3)


# ---------------------------------------------------------------------------- fusion modes


def test_sum_fusion_orders_by_the_weighted_sum(trained, some_users) -> None:
    _, _, recommender = trained
    weights = {"click": 1.0, "purchase": 2.0, "rating": 0.5}
    out = recommender.recommend(some_users, k=K, fusion=weights, fusion_mode="sum")
    expected = out["p_click"] + 2.0 * out["p_purchase"] + 0.5 * out["rating_pred"] / 5.0
    np.testing.assert_allclose(out["score"].to_numpy(), expected.to_numpy(), rtol=1e-5)
    for user in some_users:
        assert (np.diff(out.filter(pl.col("user_id") == user)["score"].to_numpy()) <= 1e-7).all()
    product = recommender.recommend(some_users, k=K, fusion=weights)
    assert product["item_id"].to_list() != out["item_id"].to_list()
    with pytest.raises(RecsysError, match="fusion mode"):
        recommender.recommend(some_users, k=K, fusion_mode="max")


# ---------------------------------------------------------------------------- batch


def test_batch_retrieval_to_parquet_equals_recommend(trained, tmp_path: Path) -> None:
    _, _, recommender = trained
    path = tmp_path / "all.parquet"
    rows = recommender.recommend_to_parquet(path, k=4, chunk_users=7, progress=False)
    written = pl.read_parquet(path)
    everyone = recommender.transform.users.ids.values
    assert rows == written.height == 4 * everyone.len()
    assert_frame_equal(written, recommender.recommend(everyone, k=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.parquet"]  # no temporary left


def test_score_pairs_flags_unknown_ids(trained, some_users) -> None:
    _, _, recommender = trained
    known_item = recommender.transform.items.ids.values[0]
    frame = pl.DataFrame({"user_id": [some_users[0], 10**9], "item_id": [known_item, 10**9]})
    scored = recommender.score_pairs(frame)
    assert scored.columns[:4] == ["user_id", "item_id", "user_known", "item_known"]
    assert scored["user_known"].to_list() == [True, False]
    assert scored["item_known"].to_list() == [True, False]
    assert_frame_equal(scored.select(HEAD_COLUMNS), recommender.predict(frame))


# ---------------------------------------------------------------------------- index stage


def test_index_stage_tunes_nprobe_and_writes_the_quality_report(trained, tmp_path: Path) -> None:
    config, _, recommender = trained
    tuned = copy.deepcopy(config)
    tuned.pipeline.output_dir = str(tmp_path / "run")
    tuned.retrieval.index = "IVF8,Flat"
    tuned.retrieval.quality_k = 10
    tuned.retrieval.target_recall = 0.9
    bundle = Recommender.load(Paths(config.output_path).model)
    index_stage(tuned, bundle)
    report = json.loads((tmp_path / "run" / "index" / "quality.json").read_text())
    assert (tmp_path / "run" / "index" / "recall_vs_speed.png").stat().st_size > 0
    chosen = report["chosen"]
    assert report["factory"] == "IVF8,Flat" and chosen["parameter"] == "nprobe"
    assert chosen["recall"] >= 0.9
    assert all(p["recall"] < 0.9 for p in report["points"] if p["value"] < chosen["value"])
    # the saved bundle searches with the chosen nprobe
    saved = Recommender.load(tmp_path / "run" / "model")
    assert saved.index.factory == "IVF8,Flat" and saved.index.search_value == chosen["value"]
    # a configured nprobe wins over tuning
    tuned.retrieval.nprobe = 8
    index_stage(tuned, bundle)
    assert Recommender.load(tmp_path / "run" / "model").index.search_value == 8
    assert recommender.index.factory == "Flat"  # the fixture's bundle is untouched


# ---------------------------------------------------------------------------- every event


def test_no_recommended_item_is_in_the_users_input_history(trained) -> None:
    _, features, recommender = trained
    # every user's last events are in the internal test split (per-user temporal)
    users = features.test["user_id"].unique().sort()
    out = recommender.recommend(users, k=K)
    clicked = (
        pl.concat([features.train, features.validation, features.test], how="diagonal_relaxed")
        .filter(pl.col("click") == 1)
        .select("user_id", "item_id")
        .unique()
    )
    assert out.join(clicked, on=["user_id", "item_id"], how="inner").height == 0
    test_clicks = features.test.filter(pl.col("click") == 1).select("user_id", "item_id")
    # as of the test period, the test items are not yet seen, so they can be recommended
    asked = features.test.group_by("user_id").agg(pl.col("timestamp").min())
    then = recommender.recommend(asked, k=recommender.index.n_items)
    assert then.join(test_clicks, on=["user_id", "item_id"], how="inner").height > 0


def _copy_bundle(recommender: Recommender, folder) -> Recommender:
    recommender.save(folder)
    return Recommender.load(folder)


def _two_clicks(user: int, items: list[int], at: int) -> pl.DataFrame:
    """Clicks of `user` on two items at `at` and a minute later (the second purchased
    and rated 4)."""
    return pl.DataFrame(
        {
            "user_id": [user, user],
            "item_id": items,
            "timestamp": [at, at + 60],
            "click": [1, 1],
            "purchase": [0, 1],
            "rating": [None, 4.0],
        }
    )


def test_observe_takes_new_events_once_and_serves_them(trained, tmp_path) -> None:
    _, features, recommender = trained
    bundle = _copy_bundle(recommender, tmp_path / "model")
    user = int(features.test["user_id"][0])
    later = int(features.test["timestamp"].max()) + 3600
    before = bundle.recommend([user], k=5, fusion=CLICK_ONLY)
    dated_request = pl.DataFrame({"user_id": [user], "timestamp": [later - 1]})
    dated_before = bundle.recommend(dated_request, k=5, fusion=CLICK_ONLY)
    new_items = before["item_id"].head(2).to_list()
    events = _two_clicks(user, new_items, later)
    history_before = bundle.transform.history.serving_read(pl.Series([user]), "user", None)[0]
    assert bundle.observe(events) == 2
    history_after = bundle.transform.history.serving_read(pl.Series([user]), "user", None)[0]
    assert history_after["clicks"][0] == history_before["clicks"][0] + 2
    assert history_after["purchases"][0] == history_before["purchases"][0] + 1
    after = bundle.recommend([user], k=5, fusion=CLICK_ONLY)
    assert not set(new_items) & set(after["item_id"].to_list())  # now seen
    # a request dated before the new events does not see them (reads are as of a time)
    dated = bundle.recommend(dated_request, k=5, fusion=CLICK_ONLY)
    assert_frame_equal(dated, dated_before)
    bundle.save(tmp_path / "model")
    again = Recommender.load(tmp_path / "model")
    manifest = (tmp_path / "model" / "manifest.json").read_text()
    assert again.observe(events) == 0  # re-sending the same events changes nothing
    again.save(tmp_path / "model")
    assert (tmp_path / "model" / "manifest.json").read_text() == manifest


def test_observe_cli_rewrites_the_bundle(trained, tmp_path) -> None:
    from recsys_mtl.cli import main

    _, features, recommender = trained
    recommender.save(tmp_path / "model")
    user = int(features.test["user_id"][0])
    item = int(features.test["item_id"][0])
    path = tmp_path / "new.parquet"
    pl.DataFrame(
        {"user_id": [user], "item_id": [item], "timestamp": [2_000_000_000], "click": [1]}
    ).write_parquet(path)
    assert main(["observe", "--model", str(tmp_path / "model"), "--events", str(path)]) == 0
    loaded = Recommender.load(tmp_path / "model")
    out = loaded.recommend([user], k=loaded.index.n_items)
    assert item not in out["item_id"].to_list()
    assert main(["observe", "--model", str(tmp_path / "nothing"), "--events", str(path)]) == 2


def test_a_request_carrying_events_reads_them_for_that_request_only(trained, tmp_path) -> None:
    """`with_events` (what a REST request with events_* columns runs) reads the user's
    history and seen set exactly as the bundle would after `observe` under online
    freshness, and changes nothing in the bundle."""
    from recsys_mtl.serving import answer

    _, features, recommender = trained
    bundle = _copy_bundle(recommender, tmp_path / "model")
    user = int(features.test["user_id"][0])
    later = int(features.test["timestamp"].max()) + 3600
    before = bundle.recommend([user], k=5, fusion=CLICK_ONLY)
    new_items = before["item_id"].head(2).to_list()
    events = _two_clicks(user, new_items, later)
    view = bundle.with_events(events, [user])
    observed = _copy_bundle(recommender, tmp_path / "observed")
    observed.transform.history.spec.freshness = "online"  # each event visible at its time
    assert observed.observe(events) == 2
    for at in (None, np.array([later + 61]), np.array([later + 1])):
        got = view.transform.history.serving_read(pl.Series([user]), "user", at)
        want = observed.transform.history.serving_read(pl.Series([user]), "user", at)
        assert_frame_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    after = view.recommend([user], k=5, fusion=CLICK_ONLY)
    assert not set(new_items) & set(after["item_id"].to_list())
    # the same through the pyfunc's request columns
    request = pl.DataFrame(
        {
            "user_id": [user],
            "events_item_id": [new_items],
            "events_timestamp": [[later, later + 60]],
            "events_purchase": [[0, 1]],
            "events_rating": [[float("nan"), 4.0]],
        }
    )
    params = {"k": 5, **{f"weight_{t}": w for t, w in CLICK_ONLY.items()}}
    answered = pl.from_pandas(answer(bundle, request, params))
    assert_frame_equal(answered, after, check_dtypes=False)
    # the bundle itself is unchanged, and events it already holds are not counted again
    assert_frame_equal(bundle.recommend([user], k=5, fusion=CLICK_ONLY), before)
    assert observed.with_events(events, [user]) is observed
    with pytest.raises(RecsysError, match="differ in length"):
        answer(bundle, request.with_columns(events_timestamp=pl.lit([later])), params)
