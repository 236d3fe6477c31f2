"""End-to-end: SIGTERM drains. In-flight requests, streamed and whole, run to their end;
readiness fails at once; new requests get 503 or a refused connection, never a reset;
past the grace period what still runs ends with a clear 503 or error event; then every
process is gone. Each test starts a service of its own, as a supervisor would stop it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH, RunningService, service_env

pytestmark = pytest.mark.e2e


def _body(tokens: int, stream: bool = False) -> dict:
    return {"model": "openchat-3.5", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": tokens, "ignore_eos": True, "stream": stream}


def _whole(url: str, tokens: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=_body(tokens), headers=AUTH,
                      timeout=180)


class _Stream:
    """A streamed chat read on a thread: its events, and when the first one came."""

    def __init__(self, url: str, tokens: int) -> None:
        self.events: list[dict | str] = []
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(url, tokens), daemon=True)
        self._thread.start()

    def _read(self, url: str, tokens: int) -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", headers=AUTH,
                              json=_body(tokens, stream=True), timeout=180) as response:
                assert response.status_code == 200, response.read()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        data = line[len("data: "):]
                        self.events.append(data if data == "[DONE]" else json.loads(data))
                        self.started.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.started.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        assert self.error is None, repr(self.error)

    def tokens(self) -> int:
        return sum(len(e["choices"][0]["delta"].get("content") or "") > 0
                   for e in self.events if isinstance(e, dict) and e.get("choices"))


def _descendants(running: RunningService) -> list[psutil.Process]:
    return psutil.Process(running.process.pid).children(recursive=True)


def _all_gone(processes: list[psutil.Process], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in processes
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.5)
    return False


def _wait_running(url: str, count: int, timeout: float = 60) -> None:
    """Until the engine runs `count` requests: both are surely in flight, not still on
    their way (a loaded machine can be slow to send one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30).text
        running = [sample.value for family in text_string_to_metric_families(metrics)
                   if family.name == "vllm:num_requests_running" for sample in family.samples]
        if running and sum(running) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"the engine did not run {count} requests within {timeout} s")


def _readiness_fails(url: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz", timeout=within).status_code == 503:
            return True
        time.sleep(0.1)
    return False


class _Prober:
    """Sends new requests from a thread until stopped, and sorts what happened to them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = httpx.post(f"{self.url}/v1/chat/completions", json=_body(2),
                                    headers=AUTH, timeout=30)
                code = answer.json().get("error", {}).get("code") if answer.status_code != 200 \
                    else "ok"
                self.outcomes.append(f"{answer.status_code} {code}")
            except httpx.ConnectError:
                self.outcomes.append("refused")
            except httpx.HTTPError as exc:  # a reset, a read error: what must not happen
                self.outcomes.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(60)
        return self.outcomes


def test_sigterm_drains_in_flight_requests_then_stops(tmp_path):
    running = RunningService(service_env(OPENCHAT_SERVICE__SHUTDOWN_GRACE_S="90"),
                             tmp_path / "log")
    try:
        running.wait_ready()
        processes = _descendants(running)
        assert any("VLLM::EngineCore" in " ".join(p.cmdline()) for p in processes)
        stream = _Stream(running.url, 1200)
        with ThreadPoolExecutor(1) as pool:
            whole = pool.submit(_whole, running.url, 1200)
            assert stream.started.wait(60)
            _wait_running(running.url, 2)
            # A supervisor (Docker, Kubernetes, systemd) signals the main process only.
            os.kill(running.process.pid, signal.SIGTERM)
            # Readiness fails within moments, so the load balancer stops sending.
            assert _readiness_fails(running.url, within=5)
            assert httpx.get(f"{running.url}/livez", timeout=5).status_code == 200
            refused = _whole(running.url, 2)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "shutting_down"
            assert refused.headers["connection"] == "close"
            prober = _Prober(running.url)
            answer = whole.result(timeout=180)
        stream.join(180)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 1200
        assert answer.json()["choices"][0]["finish_reason"] == "length"
        assert stream.events[-1] == "[DONE]"
        finishes = [e["choices"][0].get("finish_reason") for e in stream.events
                    if isinstance(e, dict) and e.get("choices")]
        assert finishes[-1] == "length", stream.events[-3:]
        assert not any(isinstance(e, dict) and "error" in e for e in stream.events)

        assert running.process.wait(timeout=90) == 0, running.log()[-3000:]
        outcomes = prober.stop()
        assert outcomes, "the prober sent nothing"
        assert set(outcomes) <= {"503 shutting_down", "refused"}, outcomes
        assert _all_gone(processes), "an engine process outlived the server"
        log = running.log()
        assert "draining 2 requests in flight" in log
        assert "stopping vLLM engine" in log
        assert "Traceback" not in log
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{running.url}/livez", timeout=5)
    finally:
        running.stop()


def test_requests_past_the_grace_period_end_with_a_clear_error(tmp_path):
    running = RunningService(service_env(OPENCHAT_SERVICE__SHUTDOWN_GRACE_S="3"),
                             tmp_path / "log")
    try:
        running.wait_ready()
        processes = _descendants(running)
        stream = _Stream(running.url, 8000)
        with ThreadPoolExecutor(1) as pool:
            whole = pool.submit(_whole, running.url, 8000)
            assert stream.started.wait(60)
            _wait_running(running.url, 2)
            signalled = time.monotonic()
            os.kill(running.process.pid, signal.SIGTERM)
            answer = whole.result(timeout=120)
        stream.join(120)
        assert time.monotonic() - signalled < 30
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "request_aborted"
        assert stream.events[-1] == "[DONE]"
        assert stream.events[-2]["error"]["code"] == "request_aborted", stream.events[-3:]
        running.process.wait(timeout=90)
        assert _all_gone(processes)
        assert "grace period over: aborting 2 requests" in running.log()
    finally:
        running.stop()
