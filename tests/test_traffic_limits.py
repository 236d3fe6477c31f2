"""End-to-end: the traffic limits (service.traffic: max_concurrency, timeout; BentoML
answered them in its own shape) answer in OpenAI's error shape like everything else, and
a timed-out request frees its engine slot. A service of its own, with a limit of one request and a 3 s timeout."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import AUTH, RunningService, service_env

pytestmark = pytest.mark.e2e


def _chat(url: str, tokens: int) -> httpx.Response:
    body = {"model": "openchat-3.5", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": tokens, "ignore_eos": True}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)


def _next_event(lines) -> str:
    return next(line for line in lines if line)  # events are separated by blank lines


def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"]
    return error


def test_concurrency_limit_and_timeout_answer_in_openai_shape(tmp_path):
    running = RunningService(service_env(OPENCHAT_SERVICE__TRAFFIC__MAX_CONCURRENCY="1",
                                         OPENCHAT_SERVICE__TRAFFIC__TIMEOUT="3"),
                             tmp_path / "log")
    try:
        running.wait_ready()
        body = {"model": "openchat-3.5", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8000, "ignore_eos": True, "stream": True}
        # A stream that has started and is far from its end is surely in flight: the one
        # request allowed (a short one could end before the next request arrives).
        with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=body,
                          headers=AUTH, timeout=120) as stream:
            lines = stream.iter_lines()
            assert _next_event(lines).startswith("data: ")
            error = _assert_openai_error(_chat(running.url, 2), 429)
            assert error["code"] == "server_busy"
            assert _next_event(lines).startswith("data: ")  # the running stream is unharmed
        # The client hung up: its slot is free again within moments.
        deadline = time.monotonic() + 20
        while (answer := _chat(running.url, 2)).status_code == 429:
            assert time.monotonic() < deadline, "the hung-up stream kept its slot"
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        started = time.monotonic()
        error = _assert_openai_error(_chat(running.url, 8000), 504)  # far longer than 3 s
        assert error["code"] == "timeout"
        assert time.monotonic() - started < 20
        # The timed-out request's engine slot is free again: a short one runs at once.
        assert _chat(running.url, 2).status_code == 200
    finally:
        running.stop()
