"""Run the `recsys-mtl` command line in-process, capturing its output."""

from __future__ import annotations

import contextlib
import io

from recsys_mtl.cli import main


def cli(*args: object) -> tuple[int, str, str]:
    """Run `recsys-mtl ARGS` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()
