"""The served model on data the pipeline never saw, scored only through the CLI.

MovieLens-100K is cut in two, by one of two protocols:
  per_user     each user's latest 20 % of ratings are held out;
  global_time  the last 20 % of ratings in time are held out (users with no earlier
               rating are "cold", the others "warm", reported apart).
The earlier part is written as an `impressions` file (positives, with the pipeline's
own negative sampling) and given to `recsys-mtl run` with the shipped ML-100K settings
and each variant's overrides. The held-out file is never given to the pipeline: its
negatives (4 per positive) are drawn once, with a fixed seed, from items the user never
rated, and it is scored only through `recsys-mtl predict` (click and purchase AUC,
rating RMSE) and `recsys-mtl recommend` (Recall@10 and NDCG@10, each user asked at the
time of their first held-out rating). Popularity (training clicks) is scored on the
same rows. Paired bootstrap intervals over users compare the shipped configuration
with popularity and with the same configuration without time-varying features.

Choose on validation, report on test once. `per_user_validation` and
`global_time_validation` re-cut the earlier file by the same rule (the held-out file is
not read at all) and score its later part the same way: settings are chosen there, by
the mean rank over click AUC, purchase AUC and Recall@10, and the chosen ones are then
run once on the outer protocols. The tables also list the pipeline's own
early-stopping monitor.

  .venv/bin/python benchmarks/heldout_movielens.py [--protocols per_user global_time]
      [--variants shipped static] [--one-seed-variants online history_only ...]
      [--seeds 42 43 44] [--set key=value ...]

`--variants` run every seed, `--one-seed-variants` the first seed only. A run already
trained with the same overrides and the same pipeline settings (the parsed file, so a
comment edit keeps it) is reused; delete its folder under data/benchmarks/heldout/ to
redo it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens_common import (
    BENCHMARK_EVALUATION,
    PIPELINE,
    ROOT,
    add_common_arguments,
    reproduce_line,
    write_results,
)

from recsys_mtl.config import MovieLensSource
from recsys_mtl.data.movielens import load_movielens
from recsys_mtl.evaluation.bootstrap import (
    bootstrap_auc,
    bootstrap_mean,
    bootstrap_rmse,
    paired_difference_interval,
    percentile_interval,
    resample_counts,
)
from recsys_mtl.evaluation.metrics import auc, per_user_auc, per_user_ranking, rmse
from recsys_mtl.features.split import TEST, assign_split
from recsys_mtl.retrieval.index import ordered_topk

DATA = ROOT / "data" / "raw" / "ml-100k"
WORK = ROOT / "data" / "benchmarks" / "heldout"
HELD_OUT = 0.2
NEGATIVES = 4
NEGATIVE_SEED = 2024
RESAMPLES = 500
K = 10
# about the held-out period of the global_time protocol (47 days of ML-100K): the
# staleness a bundle served that long without retraining has
SNAPSHOT_EVERY = "45d"
STATIC = [
    "features.history=false",
    "features.recent_items=0",
    "features.recent_ratings=0",
    "features.time=[]",
]
VARIANTS: dict[str, list[str]] = {
    "shipped": [],
    "static": STATIC,
    "online": ["features.freshness=online"],
    "history_only": [*STATIC, "features.history=true"],
    "recent_items_only": [*STATIC, "features.recent_items=5"],
    "recent_ratings_only": [*STATIC, "features.recent_ratings=5"],
    "recency_only": [*STATIC, "features.time=['recency']"],
    # leave one group out of the shipped settings
    "no_history": ["features.history=false"],
    "no_recent_items": ["features.recent_items=0"],
    "no_recent_ratings": ["features.recent_ratings=0"],
    "no_recency": ["features.time=[]"],
    "with_recent_ratings": ["features.recent_ratings=5"],
    # deployment and freshness rules
    "refit_all": ["training.refit='all'"],
    "time_snapshots": [f"features.snapshot_every='{SNAPSHOT_EVERY}'"],
    "global_split": ["features.split='global_time'"],
    "global_split_time_snapshots": [
        "features.split='global_time'",
        f"features.snapshot_every='{SNAPSHOT_EVERY}'",
    ],
    "global_split_static": [*STATIC, "features.split='global_time'"],
    # the snapshot rule and the deployment, chosen on the *_validation protocols
    "static_refit_all": [*STATIC, "training.refit='all'"],
    "windows_20d_refit_all": ["features.snapshot_every='20d'", "training.refit='all'"],
    "windows_45d_refit_all": ["features.snapshot_every='45d'", "training.refit='all'"],
    "windows_90d_refit_all": ["features.snapshot_every='90d'", "training.refit='all'"],
    # cold ids: the unknown rows trained by id dropout
    "id_dropout_5": ["model.id_dropout=0.05"],
    "id_dropout_20": ["model.id_dropout=0.2"],
    # the sharing architecture chosen on validation Δm at 32 dims
    "mmoe": ["model.sharing='mmoe'"],
    "id_min_count_5": ["features.id_min_count=5"],
    "id_min_count_10": ["features.id_min_count=10"],
    "id_min_count_20": ["features.id_min_count=20"],
    # a static popularity curve: the item's training clicks, one value for every row
    "item_popularity": ["features.item_popularity=true"],
    # item-side history (the item's counts and rates as of the same snapshots)
    "item_history": ["features.item_history=true"],
    "item_history_static_click": [
        "features.item_history=true",
        "model.static_retrieval_items=true",
    ],
    "item_history_no_in_batch": [
        "features.item_history=true",
        "training.retrieval_loss_weight=0.0",
    ],
}
DESCRIPTIONS = {
    "shipped": "pipelines/movielens-100k.toml as shipped",
    "static": "the same, every time-varying feature off",
    "online": "the same, features.freshness = online (every earlier event, as version 1)",
    "history_only": "static + history aggregates",
    "recent_items_only": "static + the last 5 items",
    "recent_ratings_only": "static + the mean of the last 5 ratings",
    "recency_only": "static + recency",
    "no_history": "shipped without the history aggregates",
    "no_recent_items": "shipped without the last 5 items",
    "no_recent_ratings": "shipped without the mean of the last 5 ratings",
    "no_recency": "shipped without recency",
    "with_recent_ratings": "shipped plus the mean of the last 5 ratings",
    "refit_all": "shipped with training.refit = 'all' (the held-out file scores the model "
    "retrained on every split of the earlier file)",
    "time_snapshots": f"shipped with training history published every {SNAPSHOT_EVERY} "
    "(features.snapshot_every) instead of per-user blocks",
    "global_split": "shipped with the internal split in global time",
    "global_split_time_snapshots": "global_split plus time_snapshots",
    "global_split_static": "static with the internal split in global time",
    "static_refit_all": "static with training.refit = 'all'",
    "windows_20d_refit_all": "refit_all with training history published every 20 days",
    "windows_45d_refit_all": "refit_all with training history published every 45 days",
    "windows_90d_refit_all": "refit_all with training history published every 90 days",
    "id_dropout_5": "shipped with model.id_dropout = 0.05 (ids read as unknown in training)",
    "id_dropout_20": "shipped with model.id_dropout = 0.2",
    "mmoe": "shipped with model.sharing = 'mmoe'",
    **{
        f"id_min_count_{n}": f"shipped with features.id_min_count = {n} (items and users seen "
        f"fewer than {n} times share the unknown id row, keeping their side features)"
        for n in (5, 10, 20)
    },
    "item_popularity": "shipped with features.item_popularity = true (the item's training "
    "clicks, bucketed, as a static item feature)",
    "item_history": "shipped with features.item_history = true (the item's counts, rates "
    "and recency under the same freshness rule)",
    "item_history_static_click": "item_history with model.static_retrieval_items = true "
    "(the click head and the index ignore them)",
    "item_history_no_in_batch": "item_history without the in-batch retrieval loss",
}
VALIDATION = "_validation"
COLUMNS = ("user_id", "item_id", "timestamp", "click", "purchase", "rating")
COMPARED = ("click_auc", "purchase_auc", f"recall@{K}")
# with paired intervals; per-user click AUC explains pooled AUC, it is not chosen on
DIFFERENCES = ("click_auc", "click_gauc", "purchase_auc", f"recall@{K}")


def cut(protocol: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(earlier, held-out positives, users, items) of ML-100K under `protocol`.

    `<protocol>_validation` cuts the earlier file of `<protocol>` again by the same rule:
    settings are chosen on its later part and the test file is scored once."""
    base = protocol.removesuffix(VALIDATION)
    dataset = load_movielens(MovieLensSource(path=str(DATA), variant="100k"))
    events = dataset.impressions if base == protocol else cut(base)[0]
    kind = "per_user_temporal" if base == "per_user" else "global_time"
    split = assign_split(events, kind, validation_fraction=0.0, test_fraction=HELD_OUT)
    earlier = split.filter(pl.col("split") != TEST).drop("split")
    later = split.filter(pl.col("split") == TEST).drop("split")
    assert dataset.users is not None and dataset.items is not None
    return earlier, later, dataset.users, dataset.items


def with_negatives(positives: pl.DataFrame, rated: pl.DataFrame, items: np.ndarray) -> pl.DataFrame:
    """The held-out positives plus NEGATIVES per positive at the same time, drawn once
    (fixed seed) uniformly from the items the user never rated; vectorised rejection."""
    rng = np.random.default_rng(NEGATIVE_SEED)
    users = np.repeat(positives["user_id"].to_numpy(), NEGATIVES)
    times = np.repeat(positives["timestamp"].to_numpy(), NEGATIVES)
    width = int(items.max()) + 1
    rated_keys = np.unique(
        rated["user_id"].to_numpy().astype(np.int64) * width + rated["item_id"].to_numpy()
    )
    drawn = rng.choice(items, size=users.size)
    while True:  # a round redraws every rejected draw at once
        keys = users.astype(np.int64) * width + drawn
        bad = np.isin(keys, rated_keys)
        # the same negative twice for one positive also counts as rejected
        group = np.arange(users.size) // NEGATIVES
        _, first = np.unique(group * (int(keys.max()) + 1) + keys, return_index=True)
        duplicate = np.ones(users.size, dtype=bool)
        duplicate[first] = False
        bad |= duplicate
        if not bad.any():
            break
        drawn[bad] = rng.choice(items, size=int(bad.sum()))
    negatives = pl.DataFrame(
        {
            "user_id": users,
            "item_id": drawn,
            "timestamp": times,
            "click": np.zeros(users.size, dtype=np.int8),
            "purchase": np.zeros(users.size, dtype=np.int8),
            "rating": pl.Series([None] * users.size, dtype=pl.Float32),
        }
    ).cast(positives.select(COLUMNS).schema)
    return pl.concat([positives, negatives]).sort(
        "user_id", "timestamp", "click", descending=[False, False, True]
    )


def prepare(protocol: str) -> dict[str, Path]:
    """Write the earlier file, side tables, held-out file and ranking requests."""
    folder = WORK / protocol
    folder.mkdir(parents=True, exist_ok=True)
    earlier, later, users, items = cut(protocol)
    columns = list(COLUMNS)
    held_out = with_negatives(
        later.select(columns),
        pl.concat([earlier, later]).select("user_id", "item_id"),
        items["item_id"].to_numpy(),
    )
    requests = later.group_by("user_id").agg(pl.col("timestamp").min()).sort("user_id")
    paths = {
        "earlier": folder / "earlier.parquet",
        "users": folder / "users.parquet",
        "items": folder / "items.parquet",
        "held_out": folder / "held_out.parquet",
        "requests": folder / "requests.parquet",
    }
    earlier.select(columns).write_parquet(paths["earlier"])
    users.write_parquet(paths["users"])
    items.write_parquet(paths["items"])
    held_out.write_parquet(paths["held_out"])
    requests.write_parquet(paths["requests"])
    return paths


def cli(*args: str) -> None:
    command = [str(ROOT / ".venv" / "bin" / "recsys-mtl"), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def train(paths: dict[str, Path], out: Path, seed: int, overrides: list[str]) -> dict:
    settings = [
        "source.kind=impressions",
        f"source.impressions.path={paths['earlier']}",
        f"source.impressions.users_path={paths['users']}",
        f"source.impressions.items_path={paths['items']}",
        "source.impressions.positive_only=true",
        f"pipeline.output_dir={out}",
        f"pipeline.seed={seed}",
        "tracking.enabled=false",
        *BENCHMARK_EVALUATION,
        *overrides,
    ]
    stamp = out / "heldout_run.json"
    # a run is reused only with the same overrides *and* the same pipeline settings
    # (the parsed file: a comment edit keeps the runs)
    parsed = json.dumps(tomllib.loads(PIPELINE.read_text()), sort_keys=True, default=str)
    pipeline = hashlib.sha256(parsed.encode()).hexdigest()
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved["settings"] == settings and saved.get("pipeline") == pipeline:
            return saved  # already trained: delete the folder to redo
    start = time.perf_counter()
    cli("run", str(PIPELINE), *[arg for setting in settings for arg in ("--set", setting)])
    seconds = time.perf_counter() - start
    history = json.loads((out / "training" / "history.json").read_text())
    printed = json.loads((out / "reports" / "metrics.json").read_text())["metrics"]
    record = {
        "settings": settings,
        "pipeline": pipeline,
        "seconds": seconds,
        "validation": history["best_score"],
        "printed": {
            k: printed.get(f"test/{k}") for k in ("click_auc", "purchase_auc", "recall@10")
        },
    }
    stamp.write_text(json.dumps(record))
    return record


def served(paths: dict[str, Path], model: Path, out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The held-out file's scores (`predict`) and top-K lists (`recommend`)."""
    scores, lists = out / "held_out_scores.parquet", out / "held_out_top.parquet"
    cli("predict", "--model", str(model), "--input", str(paths["held_out"]), "--out", str(scores))
    cli("recommend", "--model", str(model), "--users", str(paths["requests"]),
        "-k", str(K), "--out", str(lists))  # fmt: skip
    return pl.read_parquet(scores), pl.read_parquet(lists)


class Rows:
    """The held-out rows and ranking users of one protocol, with bootstrap counts."""

    def __init__(self, paths: dict[str, Path], segment: str) -> None:
        held_out = pl.read_parquet(paths["held_out"])
        earlier = pl.read_parquet(paths["earlier"])
        warm = held_out["user_id"].is_in(earlier["user_id"].unique().implode())
        keep = {"all": pl.lit(True), "warm": warm, "cold": ~warm}[segment]
        self.mask = held_out.with_columns(keep.alias("m"))["m"].to_numpy()
        self.frame = held_out.filter(pl.Series(self.mask))
        self.users = self.frame["user_id"].unique().sort()
        self.row_user = self.users.search_sorted(self.frame["user_id"]).to_numpy()
        self.counts = resample_counts(self.users.len(), RESAMPLES, 0)
        self.earlier = earlier
        positives = self.frame.filter(pl.col("click") == 1)
        self.relevant = positives.group_by("user_id").agg("item_id").sort("user_id")

    def pointwise(self, p_click: np.ndarray, p_purchase: np.ndarray, rating: np.ndarray | None):
        f = self.frame
        out = {
            "click_auc": (f["click"].to_numpy(), p_click[self.mask]),
            "purchase_auc": (f["purchase"].to_numpy(), p_purchase[self.mask]),
        }
        point = {name: auc(y, p) for name, (y, p) in out.items()}
        reps = {
            name: bootstrap_auc(y, p, self.row_user, self.counts) for name, (y, p) in out.items()
        }
        # per-user click AUC, weighted by the user's rows (gauc): blind to user-level
        # offsets, which pooled AUC counts against a model and never against popularity
        group, user_auc, n_rows = per_user_auc(self.row_user, *out["click_auc"])
        point["click_gauc"] = float(np.average(user_auc, weights=n_rows))
        reps["click_gauc"] = bootstrap_mean(user_auc, group, self.counts, n_rows)
        if rating is not None:
            rated = ~f["rating"].is_null().to_numpy()
            y = f["rating"].fill_null(np.nan).to_numpy()
            point["rating_rmse"] = rmse(y[rated], rating[self.mask][rated])
            reps["rating_rmse"] = bootstrap_rmse(
                np.where(rated, y, np.nan), rating[self.mask], self.row_user, self.counts
            )
        return point, reps

    def ranking(self, top: pl.DataFrame) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Recall/NDCG@K of per-user top lists (user_id, item_id, rank)."""
        users = self.relevant["user_id"]
        listed = top.filter((pl.col("rank") <= K) & pl.col("user_id").is_in(users.implode()))
        top_items = np.full((users.len(), K), -1, dtype=np.int64)
        row = users.search_sorted(listed["user_id"]).to_numpy()
        top_items[row, listed["rank"].to_numpy() - 1] = listed["item_id"].to_numpy()
        lengths = self.relevant["item_id"].list.len().to_numpy()
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        relevant = self.relevant["item_id"].explode().to_numpy().astype(np.int64)
        per_user = per_user_ranking(top_items, indptr, relevant, [K])
        position = self.users.search_sorted(users).to_numpy()
        point, reps = {}, {}
        for name in (f"recall@{K}", f"ndcg@{K}"):
            values = np.asarray(per_user[name], dtype=np.float64)
            point[name] = float(values.mean())
            reps[name] = bootstrap_mean(values, position, self.counts)
        return point, reps


def popularity(rows: Rows) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Training clicks per item: the held-out rows' scores and each user's top unseen."""
    counts = rows.earlier.group_by("item_id").agg(pl.len().alias("n"))
    scored = rows.frame.join(counts, on="item_id", how="left")["n"].fill_null(0).to_numpy()
    full = np.zeros(rows.mask.size)
    full[rows.mask] = scored
    point, reps = rows.pointwise(full, full, None)
    ranked = counts.sort("n", "item_id", descending=[True, False])["item_id"].to_numpy()
    users = rows.relevant["user_id"]
    seen = (
        rows.earlier.filter(pl.col("user_id").is_in(users.implode()))
        .select("user_id", "item_id")
        .unique()
        .sort("user_id")
    )
    per_user = np.bincount(users.search_sorted(seen["user_id"]).to_numpy(), minlength=users.len())
    indptr = np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64)
    top = ordered_topk(ranked, users.len(), K, indptr, seen["item_id"].to_numpy())
    tops = pl.DataFrame(
        {
            "user_id": np.repeat(users.to_numpy(), K),
            "item_id": top.reshape(-1),
            "rank": np.tile(np.arange(1, K + 1), users.len()),
        }
    ).filter(pl.col("item_id") >= 0)
    ranking_point, ranking_reps = rows.ranking(tops)
    return {**point, **ranking_point}, {**reps, **ranking_reps}


def summarise(values: list[dict[str, float]]) -> dict[str, list[float]]:
    keys = values[0].keys()
    return {k: [float(np.mean([v[k] for v in values])), float(np.std([v[k] for v in values]))]
            for k in keys}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "heldout_movielens100k")
    parser.add_argument("--protocols", nargs="+", default=["per_user", "global_time"])
    parser.add_argument("--variants", nargs="+", default=["shipped", "static"])
    parser.add_argument(
        "--one-seed-variants",
        nargs="*",
        default=[v for v in VARIANTS if v.endswith("_only") or v == "online"],
        help="more variants, trained with the first seed only",
    )
    parser.add_argument("--reference", default="shipped",
                        help="the variant compared with the others")  # fmt: skip
    parser.add_argument("--interval-seed", type=int, default=42,
                        help="the seed whose runs give the paired intervals")  # fmt: skip
    args = parser.parse_args()
    if not (DATA / "u.data").is_file():
        raise SystemExit(f"no ML-100K in {DATA}: python ../shared/datasets/movielens100k.py {DATA}")
    variants = [*args.variants, *[v for v in args.one_seed_variants if v not in args.variants]]
    result: dict = {"variants": {v: DESCRIPTIONS[v] for v in variants}, "protocols": {}}
    for protocol in args.protocols:
        paths = prepare(protocol)
        per_user = protocol.removesuffix(VALIDATION) == "per_user"
        segments = ["all"] if per_user else ["warm", "cold"]
        table = {seg: {} for seg in segments}
        intervals: dict = {seg: {} for seg in segments}
        replicates: dict = {seg: {} for seg in segments}
        runs: dict = {}
        for seg in segments:
            rows = Rows(paths, seg)
            point, reps = popularity(rows)
            table[seg]["popularity"] = {k: [v, 0.0] for k, v in point.items()}
            replicates[seg]["popularity"] = reps
        for variant in variants:
            per_seed: dict[str, list] = {seg: [] for seg in segments}
            seeds = args.seeds if variant in args.variants else args.seeds[:1]
            for seed in seeds:
                out = WORK / protocol / f"{variant}-{seed}"
                record = train(paths, out, seed, [*VARIANTS[variant], *args.overrides])
                runs[f"{variant}/{seed}"] = record
                scores, top = served(paths, out / "model", out)
                for seg in segments:
                    rows = Rows(paths, seg)
                    point, reps = rows.pointwise(
                        scores["p_click"].to_numpy(),
                        scores["p_purchase"].to_numpy(),
                        scores["rating_pred"].to_numpy()
                        if "rating_pred" in scores.columns
                        else None,
                    )
                    ranking_point, ranking_reps = rows.ranking(top)
                    per_seed[seg].append({**point, **ranking_point})
                    if seed == args.interval_seed or seed == args.seeds[0]:
                        replicates[seg].setdefault(variant, {**reps, **ranking_reps})
                print(f"{protocol} {variant} seed {seed}: {per_seed[segments[0]][-1]} "
                      f"({record['seconds']:.0f} s)", flush=True)  # fmt: skip
            for seg in segments:
                table[seg][variant] = summarise(per_seed[seg])
        for seg in segments:
            reps = replicates[seg]
            ref = args.reference
            if ref not in reps:
                continue
            for other in [name for name in reps if name != ref]:
                intervals[seg][f"{ref} - {other}"] = {
                    m: [
                        float(table[seg][ref][m][0] - table[seg][other][m][0]),
                        *paired_difference_interval(reps[ref][m], reps[other][m]),
                    ]
                    for m in DIFFERENCES
                }
            for name, r in reps.items():
                table[seg][name]["interval"] = {
                    m: list(percentile_interval(r[m])) for m in DIFFERENCES if m in r
                }
        result["protocols"][protocol] = {"table": table, "paired": intervals, "runs": runs}
    result["seeds"] = args.seeds
    result["reproduce"] = reproduce_line("heldout_movielens.py")
    write_results(args.name, result, markdown(result))


def choice(rows: dict) -> str:
    """The validation protocols' pick: the best mean rank over the compared metrics
    (each ranked among the trained variants, 1 = best), ties to the first listed."""
    names = [name for name in rows if name != "popularity"]
    positions = {name: 0 for name in names}  # summed as integers: equal sums tie exactly
    for m in COMPARED:
        order = sorted(names, key=lambda name: -rows[name][m][0])
        for position, name in enumerate(order, start=1):
            positions[name] += position
    best = min(names, key=lambda name: positions[name])
    ranks = {name: total / len(COMPARED) for name, total in positions.items()}
    listed = ", ".join(f"{name} {rank:.2f}" for name, rank in ranks.items())
    return f"Mean rank over {', '.join(COMPARED)} (1 = best): {listed}. Chosen: **{best}**."


def markdown(result: dict) -> str:
    lines = ["# The served model on held-out MovieLens-100K", "",
             "Scored only through `recsys-mtl predict` / `recommend`; mean ± spread over seeds "
             f"{result['seeds']}. Validation: the pipeline's early-stopping monitor "
             "(`val/click_auc`), what settings are chosen on.", ""]  # fmt: skip
    metrics = ["click_auc", "click_gauc", "purchase_auc", "rating_rmse", f"recall@{K}", f"ndcg@{K}"]
    for protocol, body in result["protocols"].items():
        for seg, rows in body["table"].items():
            lines += [f"## {protocol}, {seg} users", "",
                      "| system | validation | " + " | ".join(metrics) + " | train s |",
                      "|---|---|" + "---|" * len(metrics) + "---|"]  # fmt: skip
            for name, values in rows.items():
                runs = [r for k, r in body["runs"].items() if k.split("/")[0] == name]
                val = f"{np.mean([r['validation'] for r in runs]):.4f}" if runs else ""
                secs = f"{np.mean([r['seconds'] for r in runs]):.0f}" if runs else ""
                cells = [
                    f"{values[m][0]:.4f} ± {values[m][1]:.4f}" if m in values else ""
                    for m in metrics
                ]
                lines.append(f"| {name} | {val} | " + " | ".join(cells) + f" | {secs} |")
            lines.append("")
            if protocol.endswith(VALIDATION):
                lines += [choice(rows), ""]
            if body["paired"].get(seg):
                lines.append(
                    "Differences: mean over the seeds; in brackets the paired 95 % bootstrap "
                    f"interval ({RESAMPLES} user resamples) of the first seed's runs."
                )
            for pair, diffs in body["paired"].get(seg, {}).items():
                text = ", ".join(
                    f"{m} {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" for m, d in diffs.items()
                )
                lines.append(f"- {pair}: {text}")
            lines.append("")
        shipped = [r for k, r in body["runs"].items() if k.startswith("shipped/")]
        if shipped:
            printed = summarise([r["printed"] for r in shipped])
            lines.append(
                "The pipeline's own printed test metrics for `shipped` (its internal split "
                "of the earlier file): " + ", ".join(f"{k} {v[0]:.4f}" for k, v in printed.items())
            )
            lines.append("")
    lines += ["Variants: " + "; ".join(f"`{k}`: {v}" for k, v in result["variants"].items()), "",
              result["reproduce"]]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
