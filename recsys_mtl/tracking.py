"""Experiment tracking: the one module that talks to MLflow.

Library code takes a `Tracker` and runs without MLflow (`NoopTracker`); pipelines
use `MlflowTracker`: params once, metrics per epoch under `train/`, `val/`, `test/`,
`weight/` keys, artifacts, and the recommender as an MLflow pyfunc model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from recsys_mtl.errors import RecsysError

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
MODEL_NAME = "recommender"
#: The evaluated bundle's name in a run whose shipped model was retrained on every split.
EVALUATED_MODEL = "recommender_evaluated"


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_dict(self, data: dict[str, Any], name: str) -> None: ...

    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


class NoopTracker:
    """Tracks nothing; what library code gets when no tracker is given."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        pass

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


def resolve_tracking_uri(configured: str = "") -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else the SQLite store under mlflow/."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _clean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow keys allow '@' nowhere; NaN/inf are dropped rather than logged."""
    return {
        key.replace("@", "_at_"): float(value)
        for key, value in metrics.items()
        if value is not None and math.isfinite(float(value))
    }


class MlflowTracker:
    """Logs one MLflow run; use as a context manager (the run ends FAILED on an error)."""

    def __init__(
        self,
        experiment: str,
        run_name: str,
        uri: str = "",
        nested: bool = False,
        resume_run_id: str | None = None,
        system_metrics_interval: float | None = None,
    ) -> None:
        """`resume_run_id`: continue that run (a resumed training); when the store does
        not have it, a new run is started and tagged `resumed_from` = that id.
        `system_metrics_interval`: sample MLflow's system metrics (CPU, memory; GPU with
        nvidia-ml-py) every that many seconds while the run is open (None: none)."""
        import mlflow

        self._mlflow = mlflow
        self.uri = resolve_tracking_uri(uri)
        mlflow.set_tracking_uri(self.uri)
        if mlflow.get_experiment_by_name(experiment) is None and self.uri.startswith("sqlite"):
            # Artifacts live beside the SQLite file (mlflow/artifacts for the default store).
            root = Path(self.uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
            mlflow.create_experiment(experiment, artifact_location=root.as_uri())
        mlflow.set_experiment(experiment)
        self.run_name = run_name
        self.nested = nested
        self.resume_run_id = resume_run_id
        self.system_metrics_interval = system_metrics_interval
        self.run_id: str | None = None
        self._logged_params: dict[str, str] = {}  # of a continued run

    def __enter__(self) -> MlflowTracker:
        system = self.system_metrics_interval is not None
        if system:
            from mlflow.system_metrics import (
                set_system_metrics_samples_before_logging,
                set_system_metrics_sampling_interval,
            )

            set_system_metrics_sampling_interval(self.system_metrics_interval)
            set_system_metrics_samples_before_logging(1)
            # its start/stop INFO lines would land in front of every message we print
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        if self.resume_run_id:
            try:
                run = self._mlflow.start_run(run_id=self.resume_run_id, log_system_metrics=system)
                self.run_id = run.info.run_id
                self._logged_params = dict(run.data.params)
                self._mlflow.set_tag("resumed", "true")
                return self
            except self._mlflow.exceptions.MlflowException:
                pass  # not in this store: a new run, linked below
        run = self._mlflow.start_run(
            run_name=self.run_name, nested=self.nested, log_system_metrics=system
        )
        self.run_id = run.info.run_id
        if self.resume_run_id:
            self._mlflow.set_tag("resumed_from", self.resume_run_id)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._mlflow.set_tag("error", str(exc)[:5000])
        self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED")

    def log_params(self, params: dict[str, Any]) -> None:
        """Log `params`; in a continued run, those it already has are skipped and a
        changed value is refused (MLflow parameters are write-once)."""
        values = {k: str(v)[:6000] for k, v in params.items()}
        changed = sorted(k for k, v in values.items() if self._logged_params.get(k, v) != v)
        if changed:
            key = changed[0]
            raise RecsysError(
                f"the resumed MLflow run {self.run_id} has {key} = "
                f"'{self._logged_params[key]}' but this run has '{values[key]}'",
                fix="resume with the configuration of the interrupted run, or run "
                "without --resume to start over",
            )
        new = {k: v for k, v in values.items() if k not in self._logged_params}
        if new:
            self._mlflow.log_params(new)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics(_clean_metrics(metrics), step=step)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self._mlflow.log_dict(data, name)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=folder)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_recommender(
        self,
        bundle_dir: Path,
        registered_name: str | None = None,
        name: str = MODEL_NAME,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log the bundle as an MLflow pyfunc model named `name` (with `tags` on the
        logged model); returns its model URI."""
        from recsys_mtl.serving import log_pyfunc_model

        return log_pyfunc_model(self._mlflow, bundle_dir, name, registered_name, tags)


@contextlib.contextmanager
def local_bundle(model: str) -> Iterator[Path]:
    """A local bundle folder for MODEL, for the duration of the `with` block.

    MODEL is a bundle folder, an MLflow model folder, or an MLflow model URI
    (runs:/..., models:/...); a remote model is downloaded to a temporary folder that
    is removed afterwards.
    """
    path = Path(model)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            yield path
            return
        if (path / "MLmodel").is_file():
            yield _bundle_inside_mlflow_model(path)
            return
        raise RecsysError(
            f"'{model}' is neither a recommender bundle nor an MLflow model folder",
            fix="pass the model folder written by `recsys-mtl train` or an MLflow model URI",
        )
    if "://" not in model and ":/" not in model:
        raise RecsysError(
            f"model '{model}' does not exist",
            fix="pass a local model folder or an MLflow URI such as runs:/<run_id>/recommender",
        )
    import mlflow

    mlflow.set_tracking_uri(resolve_tracking_uri())
    target = Path(tempfile.mkdtemp(prefix="recsys-mtl-model-"))
    try:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(target))
        except Exception as exc:  # MLflow raises several types for a bad URI
            raise RecsysError(
                f"cannot load MLflow model '{model}': {str(exc).splitlines()[0]}",
                fix="check the run id / model name and that MLFLOW_TRACKING_URI points at the "
                "store it was logged to",
            ) from None
        yield _bundle_inside_mlflow_model(Path(local))
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _bundle_inside_mlflow_model(folder: Path) -> Path:
    candidates = list(folder.glob("artifacts/bundle")) + list(folder.glob("**/manifest.json"))
    for candidate in candidates:
        bundle = candidate if candidate.is_dir() else candidate.parent
        if (bundle / "manifest.json").is_file():
            return bundle
    raise RecsysError(
        f"MLflow model at '{folder}' holds no recsys-mtl bundle",
        fix="log models with `recsys-mtl run` (it stores the bundle as an artifact)",
    )
