"""Errors meant for people: what went wrong, where, and how to fix it."""

from __future__ import annotations


class RecsysError(Exception):
    """A problem with the user's input, config or artifacts.

    The CLI prints it as one paragraph (no traceback) and exits non-zero.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.what.rstrip(".")
        if self.where:
            text += f" (in {self.where})"
        text += "."
        if self.fix:
            fix = self.fix.rstrip(".")
            text += f" Fix: {fix}" + ("" if fix.endswith(("?", "!")) else ".")
        return text


def example_rows(frame: object, limit: int = 3) -> str:
    """Render up to `limit` rows of a polars/pandas frame as a compact one-line example."""
    import polars as pl

    df = frame if isinstance(frame, pl.DataFrame) else pl.from_pandas(frame)  # type: ignore[arg-type]
    rows = df.head(limit).to_dicts()
    return "; ".join(", ".join(f"{k}={v!r}" for k, v in row.items()) for row in rows)
