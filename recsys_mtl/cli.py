"""The `recsys-mtl` command line.

  recsys-mtl run PIPELINE.toml [--set section.key=value ...]
  recsys-mtl features|train|index|evaluate PIPELINE.toml [--set ...]
  recsys-mtl sweep PIPELINE.toml --grid KEY=V1,V2 [--grid ...] [--set ...]
  recsys-mtl predict --model MODEL --input IMPRESSIONS.parquet --out PRED.parquet
  recsys-mtl recommend --model MODEL (--user ID ... | --users FILE) -k K [--out FILE]
  recsys-mtl evaluate --model MODEL --input LABELLED.parquet [--out REPORT.json]

MODEL is a model folder or an MLflow model URI (runs:/..., models:/...). Bad input
ends with one paragraph on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
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

    pipeline_command("run", "Run every stage: features, train, index, evaluate, queries.")
    pipeline_command("features", "Build features and write them under output_dir/features.")
    pipeline_command("train", "Train on the features; write the model bundle.")
    pipeline_command("index", "Build the FAISS index into the model bundle.")
    evaluate = pipeline_command(
        "evaluate",
        "Evaluate the pipeline's model on its test split, or --model on --input.",
        optional=True,
    )
    evaluate.add_argument("--model", help="model folder or MLflow model URI")
    evaluate.add_argument("--input", help="labelled impressions (Parquet or CSV)")
    evaluate.add_argument("--out", help="write the report as JSON here")

    sweep = pipeline_command(
        "sweep",
        "Run every combination of --grid settings as nested MLflow runs; write a "
        "comparison table and the Pareto front of the task metrics.",
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

    recommend = sub.add_parser("recommend", help="Top-k items for users (seen items excluded).")
    recommend.add_argument("--model", required=True, help="model folder or MLflow model URI")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", help="one or more user ids")
    who.add_argument("--users", help="file of user ids: Parquet/CSV with user_id, or one a line")
    recommend.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    recommend.add_argument(
        "--fusion",
        action="append",
        default=[],
        metavar="TASK=WEIGHT",
        help="fusion exponent per head, e.g. --fusion purchase=2",
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


def _print_metrics(metrics: dict[str, float]) -> None:
    """A table: one row per metric, columns model / oracle / popularity where present."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        source, _, name = key.partition("/")
        rows.setdefault(name, {})[source] = value
    sources = [s for s in ("test", "oracle", "popularity") if any(s in r for r in rows.values())]
    header = f"{'metric':<30}" + "".join(f"{s if s != 'test' else 'model':>12}" for s in sources)
    print(header)
    print("-" * len(header))
    for name in sorted(rows):
        cells = "".join(
            f"{rows[name][s]:>12.4f}" if s in rows[name] else f"{'':>12}" for s in sources
        )
        print(f"{name:<30}{cells}")


@contextlib.contextmanager
def _tracker(config: Any, stage: str) -> Iterator[Any]:
    from recsys_mtl.tracking import MlflowTracker, NoopTracker

    if not config.tracking.enabled:
        yield NoopTracker()
        return
    name = config.pipeline.name if stage == "run" else f"{config.pipeline.name}:{stage}"
    with MlflowTracker(config.tracking.experiment, name, config.tracking.uri) as tracker:
        tracker.set_tags({"stage": stage, "pipeline": config.pipeline.name})
        yield tracker


# ---------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> None:
    from recsys_mtl.config import load_config
    from recsys_mtl.pipeline import Paths, run_pipeline

    config = load_config(args.pipeline, args.overrides)
    with _tracker(config, "run") as tracker:
        summary = run_pipeline(config, tracker)
        if config.tracking.enabled:
            tracker.log_artifact(Paths(config.output_path).reports)
            if config.tracking.log_model:
                summary.model_uri = tracker.log_recommender(Paths(config.output_path).model)
    print()
    _print_metrics(summary.metrics)
    if summary.samples is not None:
        print("\nSample retrieval queries (top 5, seen items excluded):")
        with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True):
            print(summary.samples)
    print(f"\nModel bundle: {Paths(config.output_path).model}")
    if summary.run_id:
        print(f"MLflow run id: {summary.run_id}")
    if summary.model_uri:
        print(f"MLflow model: {summary.model_uri}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from recsys_mtl.config import load_config
    from recsys_mtl.sweep import parse_grid, run_sweep, sweep_configs
    from recsys_mtl.tracking import MlflowTracker

    grid = parse_grid(args.grid)
    config = load_config(args.pipeline, args.overrides)
    prepared = sweep_configs(args.pipeline, args.overrides, grid)  # errors before any run

    def child(name: str) -> Any:
        return MlflowTracker(config.tracking.experiment, name, config.tracking.uri, nested=True)

    with _tracker(config, "sweep") as tracker:
        result = run_sweep(
            args.pipeline,
            args.overrides,
            grid,
            tracker,
            child if config.tracking.enabled else None,
            prepared,
        )
    print()
    print((result.folder / "summary.md").read_text())
    print(f"Not dominated: {', '.join(result.front)}")
    print(f"Sweep outputs: {result.folder}")
    if getattr(tracker, "run_id", None):
        print(f"MLflow parent run id: {tracker.run_id}")


def cmd_stage(args: argparse.Namespace) -> None:
    from recsys_mtl import pipeline as stages
    from recsys_mtl.config import load_config
    from recsys_mtl.features.pipeline import load_features

    config = load_config(args.pipeline, args.overrides)
    paths = stages.Paths(config.output_path)
    with _tracker(config, args.command) as tracker:
        if args.command == "features":
            features = stages.features_stage(config, tracker)
            print(f"features written to {paths.features}: {features.spec['rows']}")
        elif args.command == "train":
            features = load_features(paths.features)
            _, result = stages.train_stage(config, features, tracker)
            print(
                f"trained: best epoch {result.best_epoch}, {config.training.monitor} = "
                f"{result.best_score:.4f}; model bundle at {paths.model}"
            )
        elif args.command == "index":
            recommender = stages.index_stage(config, stages.load_recommender(config))
            print(
                f"index '{recommender.index.factory}' over {recommender.index.n_items} items "
                f"written to {paths.model}"
            )
        else:
            features = load_features(paths.features)
            metrics = stages.evaluate_stage(
                config, stages.load_recommender(config), features, tracker
            )
            _print_metrics(metrics)


def cmd_evaluate_file(args: argparse.Namespace) -> None:
    from recsys_mtl.data.schema import validate_impressions
    from recsys_mtl.evaluation.evaluate import pointwise_metrics, ranking_evaluation
    from recsys_mtl.training.tensors import TensorData

    if not (args.model and args.input):
        raise RecsysError(
            "evaluate needs a PIPELINE.toml, or both --model and --input",
            fix="run `recsys-mtl evaluate pipelines/demo.toml` or "
            "`recsys-mtl evaluate --model MODEL --input FILE.parquet`",
        )
    recommender = _load_model(args.model)
    frame = validate_impressions(read_table(args.input, "--input"), args.input)
    encoded = recommender.transform.encode_pairs(frame, args.input)
    tasks = {n: t for n, t in recommender.model.tasks.items() if t.label in frame.columns}
    data = TensorData.from_frame(encoded, tasks)
    predictions = {
        k: v.to_numpy() for k, v in recommender.predict(frame, args.input).to_dict().items()
    }
    metrics = {f"test/{k}": v for k, v in pointwise_metrics(data, predictions, tasks).items()}
    metrics.update(
        {f"test/{k}": v for k, v in ranking_evaluation(recommender, frame, [10, 20]).items()}
    )
    _print_metrics(metrics)
    if args.out:
        from recsys_mtl.atomic import write_json_atomic

        write_json_atomic(
            {"input": args.input, "model": args.model, "metrics": metrics}, Path(args.out)
        )


def cmd_predict(args: argparse.Namespace) -> None:
    recommender = _load_model(args.model)
    frame = read_table(args.input, "--input")
    scores = recommender.predict(frame, args.input)
    keep = [c for c in ("user_id", "item_id") if c in frame.columns]
    write_table(pl.concat([frame.select(keep), scores], how="horizontal"), args.out)
    print(f"{scores.height} predictions written to {args.out}")


def _user_ids(args: argparse.Namespace) -> pl.Series:
    if args.user:
        return pl.Series("user_id", args.user)
    path = Path(args.users)
    if path.suffix in (".parquet", ".csv"):
        table = read_table(args.users, "--users")
        if "user_id" not in table.columns:
            raise RecsysError(f"'{path}' has no user_id column", fix="name the column user_id")
        return table["user_id"]
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
        if not isinstance(value, int | float):
            raise RecsysError(f"--fusion '{text}' needs a number", fix="write e.g. purchase=2")
        fusion[key[0]] = float(value)
    if args.k <= 0:
        raise RecsysError(f"-k must be positive, got {args.k}", fix="ask for -k 10, say")
    recommender = _load_model(args.model)
    result = recommender.recommend(_user_ids(args), k=args.k, fusion=fusion, where="--user")
    if args.out:
        write_table(result, args.out)
        print(f"{result.height} recommendations written to {args.out}")
    else:
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
            print(result)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            cmd_run(args)
        elif args.command == "sweep":
            cmd_sweep(args)
        elif args.command == "evaluate" and not args.pipeline:
            cmd_evaluate_file(args)
        elif args.command in STAGES:
            cmd_stage(args)
        elif args.command == "predict":
            cmd_predict(args)
        elif args.command == "recommend":
            cmd_recommend(args)
    except RecsysError as exc:
        print(f"recsys-mtl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsys-mtl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
