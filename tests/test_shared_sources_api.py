"""End-to-end: the same service on shared state, by configuration alone: a real
PostgreSQL server (tools read through a SELECT-only role), a real Chroma server and a
real Redis holding the per-key rate limits."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.chroma_server import chroma_server
from tests.conftest import AUTH, RunningService, service_env
from tests.postgres import running_postgres
from tests.redis_server import running_redis

pytestmark = pytest.mark.e2e
MODEL = "openchat-3.5"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    data = tmp_path_factory.mktemp("shared")
    with running_postgres() as pg, chroma_server(data / "chroma") as chroma_url, \
            running_redis() as redis_url:
        env = service_env(OPENCHAT_SQL__URL=pg.url, OPENCHAT_SQL__READ_ONLY_URL=pg.read_only_url,
                          OPENCHAT_DOCUMENTS__URL=chroma_url,
                          OPENCHAT_AUTH__RATE_LIMIT_STORAGE=redis_url)
        service = RunningService(env, data / "serve.log")
        try:
            service.wait_ready()
            with httpx.Client(base_url=service.url, timeout=120, headers=AUTH) as http:
                yield http, pg, redis_url
        finally:
            service.stop()


def test_sql_tools_read_postgres_through_the_reader_role(shared):
    http, pg, _ = shared
    tables = {t["function"]["name"]: t for t in http.get("/v1/server_tools").json()["data"]}
    enum = tables["describe_table"]["function"]["parameters"]["properties"]["table"]["enum"]
    assert sorted(enum) == ["customers", "orders", "products"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "List the tables"}],
            "server_tools": ["list_tables"], "max_tokens": 48, "seed": 4,
            "tool_choice": {"type": "function", "function": {"name": "list_tables"}}}
    trace = http.post("/v1/chat/completions", json=body).json()["server_tool_calls"]
    assert trace[0]["status"] == "ok"
    listed = json.loads(trace[0]["result"])
    with create_engine(pg.url).connect() as conn:  # the owner's view of the same database
        orders = conn.execute(text("SELECT count(*) FROM orders")).scalar_one()
    counts = {t["name"]: t["row_count"] for t in listed["tables"]}
    assert counts == {"customers": 8, "products": 10, "orders": orders}


def test_documents_live_in_the_chroma_server(shared):
    http, _, _ = shared
    added = http.post("/v1/collections/shared-docs/documents", json={
        "source": "hours.txt", "text": "Support answers the phone from 9:00 to 17:00 CET."})
    assert added.status_code == 201, added.text
    hits = http.post("/v1/collections/shared-docs/search",
                     json={"query": "when can I call the helpdesk?", "top_k": 1}).json()
    assert hits["data"][0]["source"] == "hours.txt"


def test_rate_limits_are_counted_in_redis(shared):
    import redis

    http, _, redis_url = shared
    secret = http.post("/v1/admin/keys", json={"name": "redis-rpm", "rpm": 2}).json()["secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    statuses = [http.get("/v1/models", headers=headers) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[1].headers["x-ratelimit-remaining-requests"] == "0"
    assert statuses[2].json()["error"]["type"] == "requests"
    assert int(statuses[2].headers["retry-after"]) >= 1
    stored = redis.Redis.from_url(redis_url).keys("openchat:ratelimit:*")
    assert stored, "the counts are not in Redis"
