"""End-to-end: /metrics carries the engine's vllm: family, the service's own metrics and
BentoML's, and answers only to admins; every response carries an X-Request-ID."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e
MODEL = "openchat-3.5"
HI = [{"role": "user", "content": "Hi"}]


def scrape(http) -> dict[str, list]:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    return {family.name: family.samples
            for family in text_string_to_metric_families(response.text)}


def value(families, sample_name: str, **labels) -> float:
    name = sample_name.removesuffix("_total").removesuffix("_count")
    for family_name, samples in families.items():
        if family_name not in (name, sample_name):
            continue
        return sum(s.value for s in samples if s.name == sample_name
                   and all(s.labels.get(k) == v for k, v in labels.items()))
    raise AssertionError(f"{sample_name} not exported")


@pytest.fixture(scope="module")
def traffic(http):
    """One plain, one streamed, one tool-running and one rate-limited request."""
    http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 4})
    with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": HI, "max_tokens": 4, "stream": True}) as response:
        list(response.iter_lines())
    http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": HI, "max_tokens": 48, "seed": 4,
        "server_tools": ["list_tables"],
        "tool_choice": {"type": "function", "function": {"name": "list_tables"}}})
    secret = http.post("/v1/admin/keys", json={"name": "metrics-rpm", "rpm": 1}).json()["secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    assert [http.get("/v1/models", headers=headers).status_code for _ in range(2)] == [200, 429]
    return scrape(http)


def test_engine_metrics_are_exported(traffic):
    for name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                 "vllm:request_queue_time_seconds", "vllm:kv_cache_usage_perc",
                 "vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert name in traffic, name
    assert value(traffic, "vllm:time_to_first_token_seconds_count") >= 2


def test_service_metrics_count_requests_tokens_and_streams(traffic):
    assert value(traffic, "openchat_requests_total", route="/v1/chat/completions",
                 preset=MODEL, status="200") >= 3
    assert value(traffic, "openchat_request_duration_seconds_count",
                 route="/v1/chat/completions") >= 3
    assert value(traffic, "openchat_time_to_first_token_seconds_count") >= 2
    assert value(traffic, "openchat_prompt_tokens_total", route="/v1/chat/completions") >= 34
    assert value(traffic, "openchat_completion_tokens_total",
                 route="/v1/chat/completions") >= 2
    assert value(traffic, "openchat_open_streams") == 0  # the stream above has ended
    assert value(traffic, "openchat_tool_calls_total", tool="list_tables", outcome="ok") >= 1
    assert value(traffic, "openchat_rate_limited_total", kind="requests") >= 1


def test_bentoml_metrics_are_exported(traffic):
    assert any(name.startswith("bentoml_service_request") for name in traffic)


def test_metrics_need_the_admin_scope(base_url):
    assert httpx.get(f"{base_url}/metrics").status_code == 401


def test_request_ids_are_returned_and_generated(http):
    given = http.get("/v1/models", headers={"X-Request-ID": "trace-me-42"})
    assert given.headers["x-request-id"] == "trace-me-42"
    made = http.get("/v1/models").headers["x-request-id"]
    assert len(made) == 32 and made != http.get("/v1/models").headers["x-request-id"]


def test_unsafe_request_ids_are_replaced(http):
    odd = http.get("/v1/models", headers={"X-Request-ID": "x" * 500})
    assert odd.headers["x-request-id"] != "x" * 500 and len(odd.headers["x-request-id"]) == 32


def test_prefix_cache_hits_show_in_usage_and_metrics(http, client):
    # A long shared prefix: the second request's prompt is served from the prefix cache.
    long = [{"role": "system", "content": "Answer briefly. " * 200}, *HI]
    first = client.chat.completions.create(model=MODEL, messages=long, max_tokens=1)
    again = client.chat.completions.create(model=MODEL, messages=long, max_tokens=1)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens > 400 and 400 < cached < again.usage.prompt_tokens
    before = value(scrape(http), "openchat_cached_prompt_tokens_total",
                   route="/v1/chat/completions")  # exported once something was cached
    streamed = list(client.chat.completions.create(
        model=MODEL, messages=long, max_tokens=1, stream=True,
        stream_options={"include_usage": True}))
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == cached
    for _ in range(20):  # the middleware counts a stream just after its last chunk
        after = value(scrape(http), "openchat_cached_prompt_tokens_total",
                      route="/v1/chat/completions")
        if after > before:
            break
        time.sleep(0.1)
    assert before >= cached and after - before == cached
    prompt = "Answer briefly. " * 200
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    assert completion.usage.prompt_tokens_details.cached_tokens > 400
