"""Running a real server for a test: a free port, start, wait until ready, stop."""

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                   startup_s: float = 120.0):
    """Start ``command`` (a server on ``port``), wait until ``/readyz`` answers, stop it afterwards."""
    with server_process(command, port, log_path, env, startup_s) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                   startup_s: float = 120.0):
    """:func:`running_server` yielding ``(url, process)``, for tests that signal or watch the process."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                    if requests.get(f"{url}/readyz", timeout=10).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not become ready:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_pids(master: int) -> list[int]:
    """The process ids of ``master``'s children (gunicorn's workers)."""
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []
