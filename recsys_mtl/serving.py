"""The recommender as an MLflow pyfunc model (served by `mlflow models serve`).

Input: a frame with `user_id` (and optionally `item_id`). Without `item_id` it answers
retrieval queries: the top `k` items per user (params: k), seen items excluded, each
head's score included. With `item_id` it scores the given pairs. Together with
tracking.py this is the only code that imports MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl

BUNDLE_ARTIFACT = "bundle"


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the bundle from the model's artifacts and answers queries."""

    def load_context(self, context: Any) -> None:
        from recsys_mtl.recommender import Recommender

        self.recommender = Recommender.load(Path(context.artifacts[BUNDLE_ARTIFACT]))

    # Unannotated on purpose: MLflow reads type hints on predict as an input schema.
    def predict(self, context, model_input, params=None):
        """Recommendations for a frame of user_id, or scores for user_id + item_id."""
        frame = (
            model_input
            if isinstance(model_input, pl.DataFrame)
            else pl.from_pandas(pd.DataFrame(model_input))
        )
        params = params or {}
        if "item_id" in frame.columns and frame["item_id"].null_count() < frame.height:
            scores = self.recommender.predict(frame.select("user_id", "item_id"), "request")
            return pl.concat(
                [frame.select("user_id", "item_id"), scores], how="horizontal"
            ).to_pandas()
        k = int(params.get("k", 10))
        return self.recommender.recommend(frame["user_id"], k=k, where="request").to_pandas()


def _signature(bundle_dir: Path) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from recsys_mtl.features.transform import FeatureTransform

    transform = FeatureTransform.load(bundle_dir / "transform")

    def mlflow_type(dtype: pl.DataType) -> str:
        return "long" if dtype.is_integer() else "string"

    inputs = Schema(
        [
            ColSpec(mlflow_type(transform.users.ids.dtype), "user_id"),
            ColSpec(mlflow_type(transform.items.ids.dtype), "item_id", required=False),
        ]
    )
    params = ParamSchema([ParamSpec("k", "long", 10)])
    return ModelSignature(inputs=inputs, params=params)


def log_pyfunc_model(
    mlflow: Any, bundle_dir: Path, name: str, registered_name: str | None = None
) -> str:
    """Log the bundle as a pyfunc model in the active run; returns the model URI."""
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=RecommenderPyfunc(),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=_signature(bundle_dir),
        registered_model_name=registered_name,
    )
    return str(info.model_uri)
