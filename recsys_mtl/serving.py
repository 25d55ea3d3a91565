"""The recommender as an MLflow pyfunc model (served by `mlflow models serve`).

Input: a frame with `user_id` and optionally `item_id`, `timestamp`, `exclude_items` (a
list of item ids per user) and the user side-table feature columns (for users the model
has never seen). Without `item_id` it answers retrieval queries: the top `k` items per
user with each head's score. With `item_id` it scores the given pairs (plus
`user_known` / `item_known` flags). Params (all optional, per request): `k`,
`fusion_mode`, `weight_<task>` (the fusion weights), `exclude_items` (for every user),
`exclude_seen`. Together with tracking.py this is the only code that imports MLflow.

A request can carry each user's latest events, which the served state may not hold
yet, as aligned list columns per row: `events_item_id` and `events_timestamp`
(required together), `events_click` (default 1), `events_purchase` (default 0) and
`events_rating` (default none; NaN is none). They count for this request only (history
features and seen items, each event visible from its own time); `recsys-mtl observe`
keeps events.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl

from recsys_mtl.errors import RecsysError

BUNDLE_ARTIFACT = "bundle"
WEIGHT_PREFIX = "weight_"
EVENTS_PREFIX = "events_"
#: Request list columns -> the event column each holds, with its default (None: required).
REQUEST_EVENT_COLUMNS: dict[str, tuple[str, object]] = {
    "events_item_id": ("item_id", None),
    "events_timestamp": ("timestamp", None),
    "events_click": ("click", 1),
    "events_purchase": ("purchase", 0),
    "events_rating": ("rating", float("nan")),
}
MODEL_CODE = Path(__file__).with_name("serving_entry.py")
"""Logged as the model's code (MLflow "models from code"): nothing is pickled."""


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the bundle from the model's artifacts and answers queries."""

    def load_context(self, context: Any) -> None:
        from recsys_mtl.recommender import Recommender

        self.recommender = Recommender.load(Path(context.artifacts[BUNDLE_ARTIFACT]))

    # A pandas type hint: MLflow infers no schema from it and keeps the explicit signature.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Recommendations for a frame of user_id, or scores for user_id + item_id. A bad
        request raises MLflow's invalid-parameter error, which the server answers 400."""
        try:
            return answer(self.recommender, model_input, params)
        except RecsysError as exc:
            from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


def answer(recommender: Any, model_input: Any, params: dict[str, Any] | None) -> pd.DataFrame:
    """The pyfunc's answer to one request (a frame and its params) as a pandas frame."""
    frame = (
        model_input
        if isinstance(model_input, pl.DataFrame)
        else pl.from_pandas(pd.DataFrame(model_input))
    )
    params = dict(params or {})
    frame, events = request_events(frame)
    if events is not None:
        recommender = recommender.with_events(events, frame["user_id"])
    if "item_id" in frame.columns and frame["item_id"].null_count() < frame.height:
        return recommender.score_pairs(frame, "request").to_pandas()
    if "item_id" in frame.columns:
        frame = frame.drop("item_id")
    k = params.pop("k", 10)
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    weights = {
        name[len(WEIGHT_PREFIX) :]: value
        for name, value in params.items()
        if name.startswith(WEIGHT_PREFIX) and value is not None and not _is_nan(value)
    }
    excluded = params.get("exclude_items")
    result = recommender.recommend(
        frame,
        k=k,
        fusion=weights,
        fusion_mode=params.get("fusion_mode") or None,
        exclude_seen=bool(params.get("exclude_seen", True)),
        exclude_items=list(excluded) if excluded is not None and len(excluded) else None,
        where="request",
    )
    return result.to_pandas()


def request_events(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The request without its `events_*` list columns, and the events they carry as an
    impressions frame (None when it carries none)."""
    given = [c for c in frame.columns if c.startswith(EVENTS_PREFIX)]
    if not given:
        return frame, None
    unknown = sorted(set(given) - set(REQUEST_EVENT_COLUMNS))
    missing = [c for c, (_, default) in REQUEST_EVENT_COLUMNS.items()
               if default is None and c not in given]  # fmt: skip
    if unknown or missing:
        raise RecsysError(
            f"request event columns: unknown {unknown}, missing {missing}",
            where="request",
            fix="send events_item_id and events_timestamp (lists of equal length per row), "
            "optionally events_click, events_purchase, events_rating",
        )
    lengths = frame.select(pl.col(c).list.len().alias(c) for c in given)
    unequal = lengths.select(
        pl.any_horizontal(pl.col(c).fill_null(0) != pl.col(given[0]).fill_null(0) for c in given)
    ).to_series()
    if unequal.any():
        row = int(unequal.arg_true()[0])
        raise RecsysError(
            f"request row {row}: the events_* lists differ in length "
            f"({dict(zip(given, lengths.row(row), strict=True))})",
            where="request",
            fix="give one value per event in every events_* list of a row",
        )
    events = (
        frame.select("user_id", *given)
        .explode(given)
        .drop_nulls(["events_item_id", "events_timestamp"])
        .rename({c: REQUEST_EVENT_COLUMNS[c][0] for c in given})
    )
    defaults = [
        pl.lit(default).alias(column)
        for name, (column, default) in REQUEST_EVENT_COLUMNS.items()
        if default is not None and name not in given
    ]
    events = events.with_columns(defaults).with_columns(
        pl.col("rating").cast(pl.Float64).fill_nan(None),
        pl.col("timestamp").cast(pl.Int64),
    )
    return frame.drop(given), events


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _mlflow_type(dtype: pl.DataType) -> Any:
    from mlflow.types import DataType
    from mlflow.types.schema import Array

    if dtype.is_integer():
        return DataType.long
    if dtype.is_float():
        return DataType.double
    if dtype == pl.Boolean:
        return DataType.boolean
    if isinstance(dtype, pl.List | pl.Array):
        return Array(_mlflow_type(dtype.inner))
    return DataType.string


def _signature(bundle_dir: Path) -> Any:
    """Input columns (ids in the vocabularies' types, optional request columns), the
    retrieval answer's columns, and the per-request params with the bundle's retrieval
    settings as defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    from recsys_mtl.features.transform import FeatureTransform
    from recsys_mtl.recommender import read_bundle_metadata

    transform = FeatureTransform.load(bundle_dir / "transform")
    metadata = read_bundle_metadata(bundle_dir)
    user_type = _mlflow_type(transform.users.ids.dtype)
    item_type = _mlflow_type(transform.items.ids.dtype)
    columns = [
        ColSpec(user_type, "user_id"),
        ColSpec(item_type, "item_id", required=False),
        ColSpec(DataType.long, "timestamp", required=False),
        ColSpec(Array(item_type), "exclude_items", required=False),
        ColSpec(Array(item_type), "events_item_id", required=False),
        ColSpec(Array(DataType.long), "events_timestamp", required=False),
        ColSpec(Array(DataType.long), "events_click", required=False),
        ColSpec(Array(DataType.long), "events_purchase", required=False),
        ColSpec(Array(DataType.double), "events_rating", required=False),
    ]
    table = transform.users.table
    if table is not None:
        sources = {c.source for c in transform.users.spec.table}
        columns += [
            ColSpec(_mlflow_type(table.schema[name]), name, required=False)
            for name in table.columns
            if name in sources and name != "user_id"
        ]
    retrieval = metadata["retrieval"]
    params = [
        ParamSpec("k", DataType.long, 10),
        ParamSpec("fusion_mode", DataType.string, retrieval.get("fusion_mode", "product")),
        ParamSpec("exclude_seen", DataType.boolean, True),
        ParamSpec("exclude_items", item_type, [], shape=(-1,)),
    ]
    outputs = Schema(
        [
            ColSpec(user_type, "user_id"),
            ColSpec(DataType.integer, "rank"),
            ColSpec(item_type, "item_id"),
            ColSpec(DataType.float, "score"),
            ColSpec(DataType.string, "source"),
            *[ColSpec(DataType.float, name) for name in prediction_columns(metadata["tasks"])],
        ]
    )
    fusion = retrieval.get("fusion", {})
    params += [
        ParamSpec(f"{WEIGHT_PREFIX}{task}", DataType.double, float(fusion.get(task, 0.0)))
        for task in metadata["tasks"]
    ]
    return ModelSignature(inputs=Schema(columns), outputs=outputs, params=ParamSchema(params))


def prediction_columns(tasks: dict[str, dict[str, Any]]) -> list[str]:
    """The heads' prediction columns, in the model's order, from the bundle's task specs."""
    from recsys_mtl.config import TaskConfig
    from recsys_mtl.model.multitask import conditional_column, output_column, task_order

    specs = {name: TaskConfig(**spec) for name, spec in tasks.items()}
    columns = []
    for name in task_order(specs):
        columns.append(output_column(name, specs[name]))
        if specs[name].depends_on:
            columns.append(conditional_column(name, specs[name]))
    return columns


def _input_example(bundle_dir: Path) -> pd.DataFrame | None:
    """Two known users: the example MLflow stores and shows with the model."""
    from recsys_mtl.features.transform import FeatureTransform

    users = FeatureTransform.load(bundle_dir / "transform").users.ids.values
    if users.len() == 0:
        return None
    return pd.DataFrame({"user_id": users.head(2).to_list()})


def log_pyfunc_model(
    mlflow: Any,
    bundle_dir: Path,
    name: str,
    registered_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log the bundle as a pyfunc model in the active run (`tags` on the logged
    model); returns the model URI."""
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=_signature(bundle_dir),
        input_example=_input_example(bundle_dir),
        registered_model_name=registered_name or None,
        tags=tags or None,
    )
    return str(info.model_uri)


def save_pyfunc_model(bundle_dir: Path, path: Path) -> Path:
    """Write the bundle as a local MLflow pyfunc model folder (no tracking server needed):
    `mlflow models serve -m PATH --env-manager local` serves it."""
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(MODEL_CODE),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=_signature(bundle_dir),
        input_example=_input_example(bundle_dir),
    )
    return Path(path)
