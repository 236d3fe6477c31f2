"""A real Chroma server for tests: `chroma run` on a free loopback port, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.ports import free_port

CHROMA = Path(sys.executable).parent / "chroma"


@contextlib.contextmanager
def chroma_server(path: Path, timeout: float = 30) -> Iterator[str]:
    """Run `chroma run --path PATH` until the block ends; yields its URL once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(path) / "server.log"
    Path(path).mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        # Its own process group, so stopping it cannot leave a child behind.
        process = subprocess.Popen(
            [str(CHROMA), "run", "--path", str(Path(path) / "data"), "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "NO_COLOR": "1"},
        )
        try:
            _wait_ready(process, url, log_path, timeout)
            yield url
        finally:
            _stop(process)


def _wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chroma exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/api/v2/heartbeat", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"chroma not ready in {timeout}s:\n{log_path.read_text()[-3000:]}")


def _stop(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the group, SIGKILL what is still there after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
