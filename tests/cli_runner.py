"""Run the `recsys-mtl` command line in-process, capturing its output."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from recsys_mtl.cli import main


def cli(*args: object) -> tuple[int, str, str]:
    """Run `recsys-mtl ARGS` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def run_smoke(root: Path, smoke_toml: Path, *overrides: str) -> tuple[Path, Path, str, str, str]:
    """Copy the smoke pipeline into `root` and run it through the CLI.

    The caller sets MLFLOW_TRACKING_URI and the working directory; `overrides` are
    extra `--set` values. Returns
    (pipeline file, output folder, MLflow run id, MLflow model URI, stdout).
    """
    pipeline = root / "smoke.toml"
    pipeline.write_text(smoke_toml.read_text())
    output = root / "smoke"
    sets = [f"--set={o}" for o in (f"pipeline.output_dir={output}", *overrides)]
    code, stdout, stderr = cli("run", pipeline, *sets)
    assert code == 0, stderr
    run_id = re.search(r"MLflow run id: (\w+)", stdout)
    model_uri = re.search(r"MLflow model: (\S+)", stdout)
    assert run_id and model_uri, stdout
    return pipeline, output, run_id.group(1), model_uri.group(1), stdout
