"""The `recsys-mtl` command line.

  recsys-mtl run PIPELINE.toml [--set section.key=value ...]
  recsys-mtl features|train|index|evaluate PIPELINE.toml [--set ...] [--device cuda]
  torchrun --nproc-per-node N -m recsys_mtl train PIPELINE.toml   (data-parallel)
  recsys-mtl sweep PIPELINE.toml --grid KEY=V1,V2 [--grid ...] [--set ...]
  recsys-mtl predict --model MODEL --input IMPRESSIONS.parquet --out PRED.parquet
  recsys-mtl recommend --model MODEL (--user ID ... | --users FILE | --all-users) -k K
      [--fusion TASK=W ...] [--fusion-mode product|sum] [--exclude ITEM ...] [--out FILE]
  recsys-mtl observe --model MODEL_FOLDER --events NEW.parquet
  recsys-mtl evaluate PIPELINE.toml [--seeds N]
  recsys-mtl evaluate --model MODEL --input LABELLED.parquet [--out REPORT.json]
  recsys-mtl report RUN_ID [--out FOLDER]

MODEL is a model folder or an MLflow model URI (runs:/..., models:/...). Bad input
ends with one paragraph on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from recsys_mtl.atomic import atomic_path
from recsys_mtl.data.impressions import read_table
from recsys_mtl.errors import RecsysError

STAGES = ("features", "train", "index", "evaluate")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-mtl", description="Multi-task recommender: train, evaluate, retrieve."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def pipeline_command(name: str, help_text: str, optional: bool = False) -> Any:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "pipeline",
            nargs="?" if optional else None,
            help="pipeline TOML file, e.g. pipelines/demo.toml",
        )
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, e.g. training.epochs=5",
        )
        return cmd

    run = pipeline_command("run", "Run every stage: features, train, index, evaluate, queries.")
    pipeline_command("features", "Build features and write them under output_dir/features.")
    train = pipeline_command(
        "train",
        "Train on the features; write the model bundle. Under `torchrun --nproc-per-node N "
        "-m recsys_mtl train ...` the N processes train one model data-parallel.",
    )
    for cmd in (run, train):
        cmd.add_argument(
            "--device",
            help="train on this device: cpu, cuda, cuda:N or auto (sets training.device)",
        )
        cmd.add_argument(
            "--resume",
            action="store_true",
            help="continue an interrupted run from its last checkpoint (checkpoints/last.pt), "
            "in the same MLflow run; the result equals an uninterrupted run's",
        )
    pipeline_command("index", "Build the FAISS index into the model bundle.")
    evaluate = pipeline_command(
        "evaluate",
        "Evaluate the pipeline's model on its test split, or --model on --input.",
        optional=True,
    )
    evaluate.add_argument("--model", help="model folder or MLflow model URI")
    evaluate.add_argument("--input", help="labelled impressions (Parquet or CSV)")
    evaluate.add_argument("--out", help="write the report as JSON here")
    evaluate.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="with a pipeline: train and evaluate this many seeds (pipeline.seed, +1, ...) "
        "and report mean ± std over them",
    )

    report = sub.add_parser(
        "report",
        help="Render an evaluation report (markdown and plots) again from a finished MLflow run.",
    )
    report.add_argument("run_id", help="MLflow run id of a run that evaluated a pipeline")
    report.add_argument("--out", help="output folder (default reports/RUN_ID)")
    report.add_argument("--tracking-uri", default="", help="MLflow tracking URI")

    sweep = pipeline_command(
        "sweep",
        "Run every combination of --grid settings as nested MLflow runs; write a "
        "comparison table and the Pareto front of the task metrics on validation.",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="values to try for one setting, e.g. objectives.weighting=static,famo "
        "(repeat for more settings; pipeline.seed=42,43,44 averages over seeds)",
    )

    predict = sub.add_parser("predict", help="Score impressions with every head.")
    predict.add_argument("--model", required=True, help="model folder or MLflow model URI")
    predict.add_argument("--input", required=True, help="impressions with user_id, item_id")
    predict.add_argument("--out", required=True, help="output Parquet (or .csv) file")

    observe = sub.add_parser(
        "observe",
        help="Take new events into a model's serving state and seen items (no retraining).",
    )
    observe.add_argument("--model", required=True, help="model folder (rewritten atomically)")
    observe.add_argument(
        "--events", required=True, help="impressions: user_id, item_id, timestamp, labels"
    )

    recommend = sub.add_parser("recommend", help="Top-k items for users (seen items excluded).")
    recommend.add_argument("--model", required=True, help="model folder or MLflow model URI")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", help="one or more user ids")
    who.add_argument(
        "--users",
        help="file of user ids: Parquet/CSV with user_id (and optionally exclude_items, "
        "timestamp, user features), or one id a line",
    )
    who.add_argument(
        "--all-users",
        action="store_true",
        help="every user the model knows, in chunks, into the Parquet file --out",
    )
    recommend.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    recommend.add_argument(
        "--fusion",
        action="append",
        default=[],
        metavar="TASK=WEIGHT",
        help="fusion weight per head, e.g. --fusion purchase=2",
    )
    recommend.add_argument(
        "--fusion-mode",
        choices=["product", "sum"],
        help="default: the model's retrieval.fusion_mode",
    )
    recommend.add_argument(
        "--exclude", nargs="+", default=[], metavar="ITEM", help="items no user gets"
    )
    recommend.add_argument(
        "--include-seen", action="store_true", help="do not exclude items seen in training"
    )
    recommend.add_argument("--out", help="write Parquet/CSV here instead of printing")
    return parser


# ---------------------------------------------------------------------------- helpers


def write_table(frame: pl.DataFrame, path_text: str) -> None:
    """Write Parquet (or CSV by extension) atomically."""
    path = Path(path_text)
    if path.suffix not in (".parquet", ".csv"):
        raise RecsysError(f"output '{path}' must end in .parquet or .csv", fix="rename it")
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp) if path.suffix == ".parquet" else frame.write_csv(tmp)


def _load_model(model: str) -> Any:
    from recsys_mtl.recommender import Recommender
    from recsys_mtl.tracking import local_bundle

    with local_bundle(model) as folder:
        return Recommender.load(folder)  # reads everything into memory


def _print_report(folder: Path) -> None:
    """The comparison table of an evaluation report folder, and where the report is."""

    from recsys_mtl.evaluation.report import EVALUATION_FILE, comparison_rows, text_table

    report = json.loads((folder / EVALUATION_FILE).read_text())
    print(text_table(comparison_rows(report)))
    boot = report.get("bootstrap", {})
    if boot.get("resamples"):
        print(
            f"\nIntervals: {boot['resamples']} bootstrap resamples of {boot['users']} test users; "
            "model - system intervals are paired."
        )
    print(f"Report: {folder / 'report.md'} (plots in {folder / 'plots'})")


def _print_index_quality(folder: Path) -> None:
    """The index quality report: recall@K and speed at each search setting tried."""
    path = folder / "quality.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text())
    chosen = report["chosen"]
    print(
        f"Index {report['factory']} over {report['n_items']} items: recall@{report['k']} "
        f"{chosen['recall']:.3f} at {chosen['queries_per_second']:,.0f} queries/s"
        + (f" ({chosen['parameter']} = {chosen['value']})" if chosen["parameter"] else "")
        + f"; exact scan {report['exact_queries_per_second']:,.0f} queries/s"
    )
    if len(report["points"]) > 1:
        for point in report["points"]:
            mark = " <- chosen" if point == chosen else ""
            print(
                f"  {point['parameter']} = {point['value']:>5}: recall {point['recall']:.3f}, "
                f"{point['queries_per_second']:>10,.0f} queries/s{mark}"
            )


@contextlib.contextmanager
def _tracker(config: Any, stage: str, resume: bool = False) -> Iterator[Any]:
    """The stage's MLflow run; with `resume`, the run the last checkpoint was written in."""
    from recsys_mtl.pipeline import Paths
    from recsys_mtl.tracking import MlflowTracker, NoopTracker
    from recsys_mtl.training.trainer import read_checkpoint_run_id

    if not config.tracking.enabled:
        yield NoopTracker()
        return
    name = config.pipeline.name if stage == "run" else f"{config.pipeline.name}:{stage}"
    previous = None
    if resume:
        previous = read_checkpoint_run_id(Paths(config.output_path).checkpoints / "last.pt")
    tracking = config.tracking
    with MlflowTracker(
        tracking.experiment,
        name,
        tracking.uri,
        resume_run_id=previous,
        system_metrics_interval=(
            tracking.system_metrics_interval if tracking.system_metrics else None
        ),
    ) as tracker:
        tracker.set_tags({"stage": stage, "pipeline": config.pipeline.name})
        yield tracker


def _child_trackers(config: Any) -> Any:
    """name -> a nested MLflow run under the active one, or None with tracking off."""
    from recsys_mtl.tracking import MlflowTracker

    if not config.tracking.enabled:
        return None

    def child(name: str) -> Any:
        return MlflowTracker(config.tracking.experiment, name, config.tracking.uri, nested=True)

    return child


# ---------------------------------------------------------------------------- commands


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set values, plus --device as training.device."""
    device = getattr(args, "device", None)
    return [*args.overrides, *([f"training.device={device}"] if device else [])]


def _check_device(config: Any) -> None:
    """A training device this machine lacks is an error before anything is written."""
    from recsys_mtl.training.distributed import resolve_device

    resolve_device(config.training.device)


def cmd_run(args: argparse.Namespace) -> None:
    from recsys_mtl.config import load_config
    from recsys_mtl.pipeline import Paths, run_pipeline
    from recsys_mtl.tracking import EVALUATED_MODEL

    config = load_config(args.pipeline, _overrides(args))
    _check_device(config)
    with _tracker(config, "run", args.resume) as tracker:
        summary = run_pipeline(config, tracker, resume=args.resume)
        if config.tracking.enabled and config.tracking.log_model:
            paths = Paths(config.output_path)
            if config.training.deploys_on_all:
                summary.evaluated_model_uri = tracker.log_recommender(
                    paths.evaluated_model, None, EVALUATED_MODEL, {"role": "evaluated"}
                )
            summary.model_uri = tracker.log_recommender(
                paths.model,
                config.tracking.registered_model,
                tags={"role": "deployed" if config.training.deploys_on_all else "evaluated"},
            )
    print()
    _print_report(Paths(config.output_path).reports)
    _print_index_quality(Paths(config.output_path).index_report)
    if summary.samples is not None:
        print("\nSample retrieval queries (top 5, seen items excluded):")
        with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True):
            print(summary.samples)
    print(f"\nModel bundle: {Paths(config.output_path).model}")
    if config.training.deploys_on_all:
        print(
            "  (retrained on every split for deployment; the test metrics above are the "
            f"evaluated model's, in {Paths(config.output_path).evaluated_model})"
        )
    if summary.run_id:
        print(f"MLflow run id: {summary.run_id}")
    if summary.evaluated_model_uri:
        print(f"MLflow evaluated model: {summary.evaluated_model_uri}")
    if summary.model_uri:
        print(f"MLflow model: {summary.model_uri}")
        print(
            f"Serve it: mlflow models serve -m {summary.model_uri} --env-manager local "
            "--host 127.0.0.1 --port 5001"
        )
    if config.tracking.registered_model and summary.model_uri:
        print(f"Registered as: models:/{config.tracking.registered_model}/latest")


def cmd_sweep(args: argparse.Namespace) -> None:
    from recsys_mtl.config import load_config
    from recsys_mtl.sweep import parse_grid, run_sweep, sweep_configs

    grid = parse_grid(args.grid)
    config = load_config(args.pipeline, args.overrides)
    prepared = sweep_configs(args.pipeline, args.overrides, grid)  # errors before any run
    with _tracker(config, "sweep") as tracker:
        result = run_sweep(
            args.pipeline,
            args.overrides,
            grid,
            tracker,
            _child_trackers(config),
            prepared,
        )
    print()
    print((result.folder / "summary.md").read_text())
    print(f"Not dominated on validation: {', '.join(result.front)}")
    print(f"Sweep outputs: {result.folder}")
    if getattr(tracker, "run_id", None):
        print(f"MLflow parent run id: {tracker.run_id}")


def cmd_train_distributed(args: argparse.Namespace) -> None:
    """`train` in a process started by torchrun (WORLD_SIZE > 1): join the group; rank 0
    builds the features when there are none yet, logs to MLflow and saves the bundle."""
    from recsys_mtl import pipeline as stages
    from recsys_mtl.config import load_config
    from recsys_mtl.features.pipeline import load_features
    from recsys_mtl.training.distributed import from_environment, shutdown

    config = load_config(args.pipeline, _overrides(args))
    paths = stages.Paths(config.output_path)
    device = config.training.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    distributed = from_environment(device)
    try:
        with (
            _tracker(config, "train", args.resume)
            if distributed.is_main
            else contextlib.nullcontext(_noop_tracker())
        ) as tracker:
            if distributed.is_main:
                tracker.set_tags({"world_size": str(distributed.world_size)})
                tracker.log_params({"distributed/world_size": distributed.world_size})
                if not (paths.features / "spec.json").is_file():
                    stages.features_stage(config, tracker)
            distributed.barrier()
            features = load_features(paths.features)
            _, result = stages.train_stage(
                config, features, tracker, distributed, resume=args.resume
            )
            if distributed.is_main:
                print(
                    f"trained on {distributed.world_size} processes: best epoch "
                    f"{result.best_epoch}, {config.training.monitor} = "
                    f"{result.best_score:.4f}; model bundle at {paths.model}"
                )
                run_id = getattr(tracker, "run_id", None)
                if run_id:
                    print(f"MLflow run id: {run_id}")
            distributed.barrier()
    finally:
        shutdown()


def _noop_tracker() -> Any:
    from recsys_mtl.tracking import NoopTracker

    return NoopTracker()


def cmd_stage(args: argparse.Namespace) -> None:
    from recsys_mtl import pipeline as stages
    from recsys_mtl.config import load_config
    from recsys_mtl.features.pipeline import load_features

    config = load_config(args.pipeline, _overrides(args))
    if args.command == "train":
        _check_device(config)
    paths = stages.Paths(config.output_path)
    resume = getattr(args, "resume", False)
    with _tracker(config, args.command, resume) as tracker:
        if args.command == "features":
            features = stages.features_stage(config, tracker)
            print(f"features written to {paths.features}: {features.spec['rows']}")
        elif args.command == "train":
            features = load_features(paths.features)
            _, result = stages.train_stage(config, features, tracker, resume=resume)
            print(
                f"trained: best epoch {result.best_epoch}, {config.training.monitor} = "
                f"{result.best_score:.4f}; model bundle at {paths.model}"
            )
        elif args.command == "index":
            stages.index_stage(config, stages.load_recommender(config), tracker)
            _print_index_quality(paths.index_report)
            print(f"index written to {paths.model}")
        else:
            features = load_features(paths.features)
            stages.evaluate_stage(config, stages.load_recommender(config), features, tracker)
            _print_report(paths.reports)
            if config.training.deploys_on_all:
                stages.deploy_stage(config, features, stages.selected_epochs(config), tracker)
                print(
                    f"\ndeployed model (retrained on every split) at {paths.model}; "
                    f"the evaluated one is in {paths.evaluated_model}"
                )
        run_id = getattr(tracker, "run_id", None)
        if run_id:
            print(f"MLflow run id: {run_id}")


def cmd_evaluate_file(args: argparse.Namespace) -> None:
    from recsys_mtl.data.schema import validate_impressions
    from recsys_mtl.evaluation.evaluate import RankingQueries
    from recsys_mtl.evaluation.offline import MODEL, System, evaluate_systems, flat_metrics
    from recsys_mtl.evaluation.report import comparison_rows, text_table
    from recsys_mtl.evaluation.systems import build_test_set, popularity_system

    if not (args.model and args.input):
        raise RecsysError(
            "evaluate needs a PIPELINE.toml, or both --model and --input",
            fix="run `recsys-mtl evaluate pipelines/demo.toml` or "
            "`recsys-mtl evaluate --model MODEL --input FILE.parquet`",
        )
    recommender = _load_model(args.model)
    frame = validate_impressions(read_table(args.input, "--input"), args.input)
    tasks = {n: t for n, t in recommender.model.tasks.items() if t.label in frame.columns}
    queries = RankingQueries(recommender, frame)
    ks = [10, 20]
    predictions = {
        k: v.to_numpy() for k, v in recommender.predict(frame, args.input).to_dict().items()
    }
    systems = [
        System(MODEL, "the model", predictions, top_items=queries.top_items(recommender, max(ks))),
        popularity_system(recommender, frame, queries, max(ks), tasks),
    ]
    test = build_test_set(recommender, frame, queries, tasks)
    report = evaluate_systems(test, systems, tasks, ks)
    print(text_table(comparison_rows(report)))
    if args.out:
        from recsys_mtl.atomic import write_json_atomic

        write_json_atomic(
            {
                "input": args.input,
                "model": args.model,
                "metrics": flat_metrics(report),
                "report": report,
            },
            Path(args.out),
        )


def cmd_evaluate_seeds(args: argparse.Namespace) -> None:
    from recsys_mtl.config import load_config
    from recsys_mtl.evaluation.seeds import evaluate_seeds

    if args.seeds < 1:
        raise RecsysError(f"--seeds must be at least 1, got {args.seeds}", fix="use --seeds 3")
    config = load_config(args.pipeline, args.overrides)
    with _tracker(config, "evaluate") as tracker:
        folder = evaluate_seeds(
            args.pipeline, args.overrides, args.seeds, tracker, _child_trackers(config)
        )
    print((folder / "seeds.md").read_text())
    run_id = getattr(tracker, "run_id", None)
    if run_id:
        print(f"MLflow run id: {run_id}")


def cmd_report(args: argparse.Namespace) -> None:
    from recsys_mtl.evaluation.report import render_run_report

    folder = Path(args.out or Path("reports") / args.run_id)
    path = render_run_report(args.run_id, folder, args.tracking_uri)
    _print_report(path.parent)


def cmd_predict(args: argparse.Namespace) -> None:
    recommender = _load_model(args.model)
    frame = read_table(args.input, "--input")
    for column in ("user_id", "item_id"):
        if column not in frame.columns:
            raise RecsysError(
                f"column '{column}' is missing", where=args.input, fix="give user_id and item_id"
            )
    scores = recommender.score_pairs(frame, args.input)
    write_table(scores, args.out)
    print(f"{scores.height} predictions written to {args.out}")


def cmd_observe(args: argparse.Namespace) -> None:
    from recsys_mtl.recommender import Recommender

    folder = Path(args.model)
    if not (folder / "manifest.json").is_file():
        raise RecsysError(
            f"'{folder}' is not a model folder",
            where="--model",
            fix="observe rewrites a bundle in place: pass the model folder written by "
            "`recsys-mtl train` (download an MLflow model first)",
        )
    recommender = Recommender.load(folder)
    added = recommender.observe(read_table(args.events, "--events"), args.events)
    if added:
        recommender.save(folder)
    print(f"{added} new events taken into {folder}")


def _user_requests(args: argparse.Namespace) -> pl.Series | pl.DataFrame:
    """--user ids, or the --users file (a table keeps its extra request columns)."""
    if args.user:
        return pl.Series("user_id", args.user)
    path = Path(args.users)
    if path.suffix in (".parquet", ".csv"):
        table = read_table(args.users, "--users")
        if "user_id" not in table.columns:
            raise RecsysError(f"'{path}' has no user_id column", fix="name the column user_id")
        return table
    if not path.is_file():
        raise RecsysError(f"users file '{path}' does not exist", fix="check the path")
    return pl.Series(
        "user_id", [line.strip() for line in path.read_text().splitlines() if line.strip()]
    )


def cmd_recommend(args: argparse.Namespace) -> None:
    from recsys_mtl.config import parse_override

    fusion = {}
    for text in args.fusion:
        key, value = parse_override(text)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecsysError(f"--fusion '{text}' needs a number", fix="write e.g. purchase=2")
        fusion[key[0]] = float(value)
    if args.k <= 0:
        raise RecsysError(f"-k must be positive, got {args.k}", fix="ask for -k 10, say")
    if args.all_users and (not args.out or Path(args.out).suffix != ".parquet"):
        raise RecsysError(
            "--all-users writes a Parquet file, so it needs --out FILE.parquet",
            fix="add e.g. --out recommendations.parquet",
        )
    recommender = _load_model(args.model)
    options = {
        "fusion": fusion,
        "fusion_mode": args.fusion_mode,
        "exclude_seen": not args.include_seen,
        "exclude_items": _typed_items(recommender, args.exclude) if args.exclude else None,
    }
    if args.all_users:
        rows = recommender.recommend_to_parquet(args.out, None, args.k, **options)
        print(f"{rows} recommendations written to {args.out}")
        return
    where = "--user" if args.user else "--users"
    result = recommender.recommend(_user_requests(args), k=args.k, where=where, **options)
    if args.out:
        write_table(result, args.out)
        print(f"{result.height} recommendations written to {args.out}")
    else:
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
            print(result)


def _typed_items(recommender: Any, items: list[str]) -> pl.Series:
    """Command-line item ids (text) in the vocabulary's type."""
    dtype = recommender.transform.items.ids.dtype
    if dtype.is_integer():
        bad = [item for item in items if not item.lstrip("-").isdigit()]
        if bad:
            raise RecsysError(
                f"--exclude {bad[0]!r} is not a whole number but item ids are {dtype}",
                where="--exclude",
                fix="pass numeric item ids",
            )
        return pl.Series("item_id", [int(item) for item in items], dtype=dtype)
    return pl.Series("item_id", items, dtype=pl.Utf8)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="recsys-mtl: note: %(message)s")
    try:
        if args.command == "run":
            cmd_run(args)
        elif args.command == "sweep":
            cmd_sweep(args)
        elif args.command == "evaluate" and not args.pipeline:
            cmd_evaluate_file(args)
        elif args.command == "evaluate" and args.seeds != 1:
            cmd_evaluate_seeds(args)
        elif args.command == "report":
            cmd_report(args)
        elif args.command == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cmd_train_distributed(args)
        elif args.command in STAGES:
            cmd_stage(args)
        elif args.command == "predict":
            cmd_predict(args)
        elif args.command == "recommend":
            cmd_recommend(args)
        elif args.command == "observe":
            cmd_observe(args)
    except RecsysError as exc:
        print(f"recsys-mtl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsys-mtl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
