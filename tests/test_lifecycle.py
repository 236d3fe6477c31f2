"""End-to-end: start-up, probes and shutdown of a service of its own (not the shared one)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import RunningService, service_env

pytestmark = pytest.mark.e2e


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_missing_model_exits_with_a_clear_message(tmp_path):
    running = RunningService(service_env(OPENCHAT_MODEL="/no/such/model"), tmp_path / "log")
    try:
        running.process.wait(timeout=180)
    finally:
        running.stop()
    log = running.log_path.read_text()
    assert "cannot start: model '/no/such/model' is not a directory" in log
    assert "Traceback" not in log
    assert log.count("cannot start") == 1  # not respawned in a loop


def test_probes_and_sigterm_stop_everything(tmp_path):
    running = RunningService(service_env(), tmp_path / "log")
    try:
        running.wait_ready()
        assert httpx.get(f"{running.url}/livez", timeout=10).status_code == 200
        assert httpx.get(f"{running.url}/readyz", timeout=10).status_code == 200
        descendants = psutil.Process(running.process.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert "VLLM::EngineCore" in names, "the engine core runs as a child process"

        # A supervisor stops the service with SIGTERM to its main process only.
        os.kill(running.process.pid, signal.SIGTERM)
        running.process.wait(timeout=90)
        deadline = time.monotonic() + 30
        while _alive(descendants) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alive(descendants) == []
        assert "stopping vLLM engine" in running.log_path.read_text()
    finally:
        running.stop()
