"""End-to-end: API keys, scopes, per-key rate limits, request limits and the audit log.

Keys are made through the admin API with the bootstrap admin key (OPENCHAT_ADMIN_KEY);
the test service counts rate limits over 3-second windows (conftest), so recovery is
observable without waiting a minute.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import bentoml
import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e
MODEL = "openchat-3.5"
HI = [{"role": "user", "content": "Hi"}]
CHAT = {"model": MODEL, "messages": HI, "max_tokens": 2}
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
WINDOW_S = 3
SECRETS: list[str] = []  # every secret made here: none may reach the log


@pytest.fixture(scope="module")
def anonymous(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as session:
        yield session


def make_key(http, scopes=("inference",), **limits) -> tuple[str, dict]:
    response = http.post("/v1/admin/keys", json={"name": f"test-{uuid.uuid4().hex[:6]}",
                                                  "scopes": list(scopes), **limits})
    assert response.status_code == 201, response.text
    created = response.json()
    SECRETS.append(created["secret"])
    return created["secret"], created


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


# -- authentication -------------------------------------------------------------------------

def test_requests_without_a_key_are_401_everywhere(anonymous):
    assert_error(anonymous.post("/v1/chat/completions", json=CHAT), 401, "missing_api_key")
    assert_error(anonymous.get("/v1/models"), 401)
    assert_error(anonymous.post("/chat", json={"messages": HI}), 401)  # typed API
    assert_error(anonymous.get("/v1/no-such-route"), 401)  # nothing to probe anonymously
    assert_error(anonymous.get("/metrics"), 401)


def test_probes_and_docs_stay_open(anonymous):
    assert anonymous.get("/livez").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert anonymous.get("/docs.json").status_code == 200


def test_wrong_and_malformed_keys_are_401(anonymous):
    for header in ("Bearer oc-not-a-real-key", "Basic abc", "Bearer", "oc-no-scheme"):
        response = anonymous.post("/v1/chat/completions", json=CHAT,
                                  headers={"Authorization": header})
        assert_error(response, 401)


def test_a_revoked_key_is_401_at_once(http, anonymous):
    secret, created = make_key(http)
    assert anonymous.post("/v1/chat/completions", json=CHAT,
                          headers=bearer(secret)).status_code == 200
    assert http.delete(f"/v1/admin/keys/{created['id']}").json()["revoked"] is True
    response = anonymous.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert_error(response, 401, "invalid_api_key")
    assert http.delete(f"/v1/admin/keys/{created['id']}").status_code == 404


def test_the_openai_and_bentoml_clients_authenticate(base_url, http):
    secret, _ = make_key(http)
    good = openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0)
    assert good.chat.completions.create(model=MODEL, messages=HI, max_tokens=2).usage
    bad = openai.OpenAI(base_url=f"{base_url}/v1", api_key="oc-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    with bentoml.SyncHTTPClient(base_url, token=secret, timeout=60) as bento:
        assert bento.chat(messages=HI, max_tokens=2)["usage"]["completion_tokens"] <= 2


# -- scopes ---------------------------------------------------------------------------------

def test_missing_scopes_are_403(http, anonymous):
    docs_only, _ = make_key(http, scopes=["tools:documents"])
    inference, _ = make_key(http, scopes=["inference"])
    cases = [
        (docs_only, "post", "/v1/chat/completions", CHAT),
        (inference, "post", "/v1/collections/docs/documents", {"source": "a", "text": "b"}),
        (inference, "get", "/v1/collections", None),
        (inference, "get", "/v1/admin/keys", None),
        (inference, "get", "/metrics", None),
        (inference, "post", "/ask", {"question": "hi"}),
    ]
    for secret, method, path, body in cases:
        response = anonymous.request(method.upper(), path, json=body, headers=bearer(secret))
        error = assert_error(response, 403, "insufficient_scope")
        assert error["type"] == "permission_error"


def test_server_tools_need_their_scope_whatever_the_model_asks(http, anonymous):
    secret, _ = make_key(http, scopes=["inference", "tools:documents"])
    body = {**CHAT, "server_tools": ["sql_query"]}
    error = assert_error(anonymous.post("/v1/chat/completions", json=body,
                                        headers=bearer(secret)), 403, "insufficient_scope")
    assert error["param"] == "server_tools[0]" and "tools:sql" in error["message"]
    allowed = {**CHAT, "server_tools": ["search_documents"], "max_tokens": 4}
    assert anonymous.post("/v1/chat/completions", json=allowed,
                          headers=bearer(secret)).status_code == 200


def test_scoped_key_can_write_documents(http, anonymous):
    secret, _ = make_key(http, scopes=["documents:write", "tools:documents"])
    response = anonymous.post("/v1/collections/scoped-docs/documents", headers=bearer(secret),
                              json={"source": "a.txt", "text": "Scoped write."})
    assert response.status_code == 201, response.text


# -- rate limits ----------------------------------------------------------------------------

def _wait_for_next_window(reset: str) -> None:
    time.sleep(float(reset.rstrip("s")) if reset.endswith("s") and "m" not in reset
               else WINDOW_S)


def test_requests_per_window_reach_429_with_headers_and_recover(http, anonymous):
    secret, _ = make_key(http, rpm=3)
    # The sliding window counter weighs the previous fixed window (epoch-aligned) by the
    # share still inside: a burst straddling a boundary would see its first hits fade.
    # Start it at the beginning of a fixed window, so all four land in one.
    time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)
    statuses, last = [], None
    for _ in range(4):
        last = anonymous.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
        statuses.append(last.status_code)
    assert statuses == [200, 200, 200, 429]
    error = assert_error(last, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert int(last.headers["retry-after"]) >= 1
    assert last.headers["x-ratelimit-limit-requests"] == "3"
    assert last.headers["x-ratelimit-remaining-requests"] == "0"
    time.sleep(2 * WINDOW_S + 0.5)  # a sliding window: the previous window must pass too
    assert anonymous.post("/v1/chat/completions", json=CHAT,
                          headers=bearer(secret)).status_code == 200


def test_successful_responses_carry_rate_headers(http, anonymous):
    secret, _ = make_key(http, rpm=50, tpm=5000)
    response = anonymous.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert all(h in response.headers for h in RATE_HEADERS), dict(response.headers)
    assert response.headers["x-ratelimit-limit-tokens"] == "5000"
    assert int(response.headers["x-ratelimit-remaining-requests"]) == 49
    assert response.headers["x-request-id"]


def test_tokens_per_window_reserve_then_settle(http, anonymous):
    secret, _ = make_key(http, tpm=300)
    # Reserves max_tokens (250) on admission, but a choice of two words uses ~2 tokens.
    short = {**CHAT, "max_tokens": 250, "structured_outputs": {"choice": ["yes", "no"]}}
    first = anonymous.post("/v1/chat/completions", json=short, headers=bearer(secret))
    assert first.status_code == 200, first.text
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 300 - 250  # reserved
    used = first.json()["usage"]["total_tokens"]
    assert used < 30
    # settled on real usage: the unused reservation came back
    probe = anonymous.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1},
                           headers=bearer(secret))
    assert int(probe.headers["x-ratelimit-remaining-tokens"]) > 300 - used - 60
    refused = anonymous.post("/v1/chat/completions", json={**CHAT, "max_tokens": 295},
                             headers=bearer(secret))
    assert assert_error(refused, 429, "rate_limit_exceeded")["type"] == "tokens"
    too_big = anonymous.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5000},
                             headers=bearer(secret))
    assert "never" in assert_error(too_big, 429)["message"]
    assert "retry-after" not in too_big.headers
    time.sleep(2 * WINDOW_S + 0.5)
    assert anonymous.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200},
                          headers=bearer(secret)).status_code == 200


def test_an_invalid_max_tokens_is_a_400_not_a_budget_refusal(http, anonymous):
    # A million tokens cannot fit the 8192-token context: whatever the key's budget, that
    # is invalid (reserved only up to the context, then validated).
    secret, _ = make_key(http, tpm=20000)
    response = anonymous.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1000000},
                              headers=bearer(secret))
    assert assert_error(response, 400, "context_length_exceeded")["param"] == "max_tokens"


def test_concurrent_requests_per_key(http, anonymous, base_url):
    secret, _ = make_key(http, max_concurrency=1)
    long_body = {"model": MODEL, "messages": HI, "max_tokens": 300, "ignore_eos": True,
                 "stream": True}
    started = threading.Event()

    def hold_a_slot():
        with httpx.Client(base_url=base_url, timeout=120, headers=bearer(secret)) as c:
            with c.stream("POST", "/v1/chat/completions", json=long_body) as r:
                for _ in r.iter_lines():
                    started.set()

    holder = threading.Thread(target=hold_a_slot)
    holder.start()
    assert started.wait(60)
    busy = anonymous.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    assert assert_error(busy, 429, "rate_limit_exceeded")["type"] == "concurrency"
    holder.join(120)
    assert anonymous.post("/v1/chat/completions", json=CHAT,
                          headers=bearer(secret)).status_code == 200


# -- request limits -------------------------------------------------------------------------

def test_oversized_bodies_are_413(http):
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert_error(http.post("/v1/chat/completions", json=huge), 413, "request_too_large")


def test_malformed_json_and_bad_utf8_are_400(http):
    for raw in (b'{"model": "openchat-3.5", "messages": [', b'{"model": "\xff\xfe"}'):
        response = http.post("/v1/chat/completions", content=raw,
                             headers={"Content-Type": "application/json"})
        error = assert_error(response, 400)
        assert "Traceback" not in error["message"] and "/work/" not in error["message"]


# -- audit ----------------------------------------------------------------------------------

def _audit_record(service, request_id: str) -> dict:
    """The audit line of one request, once the service has logged it."""
    deadline = time.monotonic() + 10
    while request_id not in service.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    line = next(l for l in service.log().splitlines()
                if request_id in l and '"openchat.audit"' in l)
    return json.loads(line[line.index("{"):])


def test_audit_log_names_the_key_never_the_secret(service, http, anonymous):
    secret, created = make_key(http)
    anonymous.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3},
                   headers={**bearer(secret), "X-Request-ID": "audit-probe-1"})
    record = _audit_record(service, "audit-probe-1")
    assert record["key_id"] == created["id"] and record["key_name"] == created["name"]
    assert record["status"] == 200 and record["path"] == "/v1/chat/completions"
    assert record["prompt_tokens"] == 17 and 1 <= record["completion_tokens"] <= 3
    assert record["latency_ms"] > 0
    docs_only, denied = make_key(http, scopes=["tools:documents"])
    anonymous.post("/v1/chat/completions", json=CHAT,
                   headers={**bearer(docs_only), "X-Request-ID": "audit-probe-403"})
    record = _audit_record(service, "audit-probe-403")
    assert record["status"] == 403 and record["key_id"] == denied["id"]
    log = service.log()
    assert ADMIN_KEY not in log and not any(s in log for s in SECRETS)


def test_deep_json_and_too_much_text_are_400(http):
    deep: list = []
    for _ in range(200):
        deep = [deep]
    nested = {**CHAT, "metadata": None, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "default": deep}}}]}
    error = assert_error(http.post("/v1/chat/completions", json=nested), 400)
    assert "deeper than 64" in error["message"]
    long_text = {**CHAT, "messages": [{"role": "user", "content": "word " * 60_000}]}
    started = time.monotonic()
    error = assert_error(http.post("/v1/chat/completions", json=long_text), 400,
                         "context_length_exceeded")
    assert error["param"] == "messages" and time.monotonic() - started < 2
