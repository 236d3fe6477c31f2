"""End-to-end: start-up failure and engine death, each on a service of its own (not the
shared one). SIGTERM and the drain: tests/test_drain.py."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.conftest import AUTH, RunningService, service_env

pytestmark = pytest.mark.e2e


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


def _chat(url: str, tokens: int) -> httpx.Response:
    body = {"model": "openchat-3.5", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": tokens, "ignore_eos": True}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)


def test_engine_death_gives_503_at_once_then_a_new_engine_serves(tmp_path):
    running = RunningService(service_env(), tmp_path / "log")
    try:
        running.wait_ready()
        worker = next(p for p in psutil.Process(running.process.pid).children(recursive=True)
                      if "_bentoml_impl.worker" in " ".join(p.cmdline()))
        engine = next(p for p in worker.children(recursive=True)
                      if "VLLM::EngineCore" in " ".join(p.cmdline()))
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_chat, running.url, 8000)
            time.sleep(1.5)
            engine.kill()  # the engine process dies mid-request
            failed = in_flight.result(timeout=60)
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["code"] == "engine_unavailable"
        # While the new engine starts, the port answers at once: probes and requests get a
        # prompt 503 (a load balancer moves on), the worker counts as alive.
        restarting = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            started = time.monotonic()
            ready = httpx.get(f"{running.url}/readyz", timeout=10)
            assert time.monotonic() - started < 3, "a probe waited on the restart"
            if ready.status_code == 200:
                break
            answer = _chat(running.url, 2)
            if answer.status_code == 200 and "the new vLLM engine serves" in running.log():
                break  # the new engine came up between the probe and this request
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "engine_unavailable"
            assert httpx.get(f"{running.url}/livez", timeout=10).status_code == 200
            restarting += 1
            time.sleep(1)
        assert restarting >= 3, "the restart was not observed"
        assert _chat(running.url, 4).status_code == 200
        assert worker.is_running(), "the worker itself carried on"
        log = running.log()
        assert "the vLLM engine is dead" in log and "the new vLLM engine serves" in log
        assert running.process.poll() is None
    finally:
        running.stop()
