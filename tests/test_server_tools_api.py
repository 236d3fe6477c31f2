"""End-to-end: server-side tools run by the service between generations (dev model,
SQLite sample shop, embedded Chroma)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e
MODEL = "openchat-3.5"
ASK = [{"role": "user", "content": "Which tables are in the shop database?"}]
CLIENT_TOOL = {"type": "function", "function": {
    "name": "send_email", "description": "Send an e-mail",
    "parameters": {"type": "object", "properties": {"to": {"type": "string", "maxLength": 20}},
                   "required": ["to"], "additionalProperties": False}}}


def _named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def _chat(http, **body):
    return http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body})


def test_server_tools_are_listed_with_schemas_and_scopes(http):
    tools = {t["function"]["name"]: t for t in http.get("/v1/server_tools").json()["data"]}
    assert {"sql_query", "list_tables", "describe_table", "orders_for_customer",
            "top_products", "search_documents"} <= set(tools)
    assert tools["sql_query"]["scope"] == "tools:sql"
    assert tools["search_documents"]["scope"] == "tools:documents"
    table = tools["describe_table"]["function"]["parameters"]["properties"]["table"]
    assert {"customers", "orders", "products"} <= set(table["enum"])


def test_named_server_tool_runs_and_the_model_answers_after_it(http):
    response = _chat(http, server_tools=["describe_table"], tool_choice=_named("describe_table"),
                     max_tokens=64, seed=4)
    assert response.status_code == 200, response.text
    body = response.json()
    trace = body["server_tool_calls"]
    assert trace[0]["name"] == "describe_table" and trace[0]["status"] == "ok"
    assert trace[0]["step"] == 0 and trace[0]["duration_ms"] >= 0
    table = trace[0]["arguments"]["table"]
    # The trace shows the first 500 characters of a result: "orders" runs longer.
    result = trace[0]["result"]
    expected = {"customers": {"email", "country"}, "products": {"price", "category"},
                "orders": {"customer_id", "quantity"}}
    assert result.startswith(f'{{"table":"{table}","columns":[')
    assert all(f'"name":"{column}"' in result for column in expected[table])
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["message"].get("tool_calls") in (None, [])
    # the usage covers every generation: at least two prompts (call, then answer)
    one_prompt = http.post("/tokenize", json={"messages": ASK}).json()["count"]
    assert body["usage"]["prompt_tokens"] > 2 * one_prompt


def test_a_failing_tool_becomes_its_result_not_a_failed_request(http):
    # The dev model writes gibberish SQL: the database's error is what the model reads.
    # Where its SQL string closes is luck (68 tokens for seed 0), so the call has room and
    # a few seeds are tried.
    traces = []
    for seed in range(4):
        response = _chat(http, server_tools=["sql_query"], tool_choice=_named("sql_query"),
                         max_tokens=200, seed=seed, max_tool_steps=2)
        assert response.status_code == 200, response.text
        traces.append(response.json()["server_tool_calls"])
        if traces[-1]:
            break
    trace = traces[-1]
    assert trace and trace[0]["name"] == "sql_query", traces
    assert trace[0]["status"] == "error" and "error" in json.loads(trace[0]["result"])


def test_streaming_reports_tool_progress_then_the_answer(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=64, seed=4, stream=True,
        stream_options={"include_usage": True},
        extra_body={"server_tools": ["list_tables"], "tool_choice": _named("list_tables")},
    )
    progress, text, finish, usage = [], "", None, None
    for chunk in stream:
        extra = chunk.model_extra or {}
        if "server_tool_call" in extra:
            progress.append(extra["server_tool_call"])
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert [p["status"] for p in progress] == ["running", "ok"]
    assert progress[0]["name"] == "list_tables" and progress[0]["id"] == progress[1]["id"]
    tables = json.loads(progress[1]["result"])
    assert {"customers", "orders", "products"} <= set(json.dumps(tables).split('"'))
    assert finish in ("stop", "length") and usage.completion_tokens > 0


def test_streamed_and_whole_answers_run_the_same_tools(http):
    # Call ids are random and part of the next prompt, so only the tool steps can match.
    body = {"server_tools": ["describe_table"], "tool_choice": _named("describe_table"),
            "max_tokens": 64, "seed": 3}
    whole = _chat(http, **body).json()
    events = []
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": MODEL, "messages": ASK, "stream": True, **body}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    done = [e["server_tool_call"] for e in events if "server_tool_call" in e
            and e["server_tool_call"]["status"] != "running"]
    keys = ("name", "arguments", "result", "status", "step")
    assert [{k: d[k] for k in keys} for d in done] == [
        {k: t[k] for k in keys} for t in whole["server_tool_calls"]]
    assert done and events[-1]["choices"][0]["finish_reason"] == (
        whole["choices"][0]["finish_reason"])


def test_client_tool_calls_go_back_to_the_client(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=64, seed=1, tools=[CLIENT_TOOL],
        tool_choice=_named("send_email"), extra_body={"server_tools": ["list_tables"]},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["send_email"]
    assert completion.model_extra["server_tool_calls"] == []


@pytest.mark.parametrize("extra, param", [
    ({"server_tools": ["drop_everything"]}, "server_tools[0]"),
    ({"server_tools": []}, "server_tools"),
    ({"server_tools": ["list_tables"], "n": 2}, "n"),
    ({"server_tools": ["list_tables"], "max_tool_steps": 99}, "max_tool_steps"),
    ({"server_tools": ["list_tables"], "response_format": {"type": "json_object"}},
     "server_tools"),
    ({"server_tools": ["send_email"], "tools": [CLIENT_TOOL]}, "server_tools[0]"),
])
def test_bad_server_tool_requests_are_400(http, extra, param):
    response = _chat(http, max_tokens=4, **extra)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
