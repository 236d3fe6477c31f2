"""A real, throwaway Redis server for tests: `with running_redis() as url: ...`.

It listens on 127.0.0.1 (a free port), persists nothing, works in a temporary directory and
is stopped (and the directory deleted) on exit.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.ports import free_port

STARTUP_SECONDS = 10


@contextmanager
def running_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; install it to run these tests "
                           "(apt-get install -y redis-server, as .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="openchat-redis-"))
    port = free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root),
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_ping(url, server, root / "server.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_ping(url: str, server: subprocess.Popen, log: Path) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"redis-server exited ({server.returncode}):\n"
                                   f"{log.read_text()}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING within "
                                       f"{STARTUP_SECONDS}s:\n{log.read_text()}") from None
                time.sleep(0.05)
    finally:
        client.close()
