"""`mlflow models serve` for a logged recommender on 127.0.0.1, for as long as a `with`
block runs: what the tests and the serving benchmarks start and stop.

    with local_model_server("runs:/<run_id>/recommender") as server:
        requests.post(f"{server.url}/invocations", json={...})
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recsys_mtl.errors import RecsysError


@dataclass(frozen=True)
class ModelServer:
    """A running server: its base URL, the process group it runs in and its log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def resident_bytes(self) -> int:
        """Resident memory of the server and its workers (Linux /proc; 0 elsewhere)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) != self.process.pid:  # process group id
                    continue
                status = (stat.parent / "status").read_text()
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_model_server(
    model_uri: str,
    workers: int = 1,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    start_timeout: float = 180.0,
) -> Iterator[ModelServer]:
    """Serve `model_uri` (a model folder or an MLflow model URI) with
    `mlflow models serve --env-manager local` on a free port of 127.0.0.1, with
    `workers` uvicorn workers; yields once /ping answers, stops the whole process
    group afterwards. `env` is added to this process's environment (e.g.
    MLFLOW_TRACKING_URI, OMP_NUM_THREADS); the server runs in `cwd` and its output
    goes to `log`."""
    import requests

    bin_dir = Path(sys.executable).parent
    environment = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # for uvicorn
        **(env or {}),
    }
    port = free_port()
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    log_path = log or Path(os.devnull)
    with log_path.open("w") as output:
        process = subprocess.Popen(
            command,
            env=environment,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ModelServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RecsysError(
                    f"`mlflow models serve` for '{model_uri}' exited with code "
                    f"{process.returncode} before answering",
                    fix=f"read its output in {log_path}",
                )
            try:
                if requests.get(f"{server.url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RecsysError(
                    f"`mlflow models serve` for '{model_uri}' did not answer /ping within "
                    f"{start_timeout:.0f} s",
                    fix=f"read its output in {log_path}",
                )
            time.sleep(0.25)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
