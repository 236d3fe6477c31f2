"""The tool registry: schemas from signatures, validation, errors and limits as results."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Literal

import pytest
from pydantic import Field

from openchat.access.scopes import SQL_SCOPE
from tools.registry import Registry, tool


@tool(SQL_SCOPE)
async def lookup(table: Literal["a", "b"],
                 limit: Annotated[int, Field(ge=1, le=5, description="Rows.")] = 2):
    """Look a table up."""
    if table == "b":
        raise RuntimeError("table b is broken")
    return {"table": table, "rows": list(range(limit))}


@tool(SQL_SCOPE)
async def slow():
    """Never answers in time."""
    await asyncio.sleep(5)


@tool(SQL_SCOPE)
async def big():
    """Returns more than the budget."""
    return "é" * 5000


def run(name, arguments, timeout=1.0, max_bytes=1000):
    registry = Registry()
    for t in (lookup, slow, big):
        registry.add(t)
    return asyncio.run(registry.run(name, arguments, timeout=timeout, max_bytes=max_bytes))


def test_schema_comes_from_the_signature_and_docstring():
    spec = lookup.definition()["function"]
    assert spec["description"] == "Look a table up."
    assert spec["parameters"] == {
        "type": "object", "additionalProperties": False, "required": ["table"],
        "properties": {"table": {"enum": ["a", "b"], "type": "string"},
                       "limit": {"type": "integer", "minimum": 1, "maximum": 5,
                                 "default": 2, "description": "Rows."}},
    }
    assert lookup.scope == SQL_SCOPE


def test_valid_call_returns_json():
    result = run("lookup", {"table": "a", "limit": 3})
    assert result.ok and json.loads(result.output) == {"table": "a", "rows": [0, 1, 2]}
    assert result.duration_ms >= 0 and not result.truncated


@pytest.mark.parametrize("arguments, needle", [
    ({"table": "c"}, "table"),
    ({"table": "a", "limit": 9}, "limit"),
    ({"table": "a", "extra": 1}, "extra"),
    ({}, "table"),
])
def test_invalid_arguments_become_an_error_result(arguments, needle):
    result = run("lookup", arguments)
    assert not result.ok and needle in json.loads(result.output)["error"]


def test_handler_errors_and_unknown_tools_become_results():
    assert json.loads(run("lookup", {"table": "b"}).output) == {
        "error": "RuntimeError: table b is broken"}
    assert "no server tool" in json.loads(run("nope", {}).output)["error"]


def test_timeout_becomes_a_result():
    result = run("slow", {}, timeout=0.2)
    assert not result.ok and "within 0.2 s" in json.loads(result.output)["error"]
    assert result.duration_ms < 2000


def test_big_results_are_cut_to_valid_json_within_budget():
    result = run("big", {}, max_bytes=1000)
    assert result.truncated and len(result.output.encode()) <= 1000
    assert json.loads(result.output)["truncated"] is True


def test_registration_rules():
    registry = Registry()
    registry.add(lookup)
    with pytest.raises(ValueError):
        registry.add(lookup)
    with pytest.raises(TypeError):
        tool(SQL_SCOPE)(lambda: None)
    with pytest.raises(TypeError):
        @tool(SQL_SCOPE)
        async def undocumented():
            pass


@tool(SQL_SCOPE)
async def quotes():
    """Returns text that grows when escaped."""
    return '"\\' * 3000


def test_escaping_heavy_results_still_fit_the_budget():
    registry = Registry()
    registry.add(quotes)
    result = asyncio.run(registry.run("quotes", {}, timeout=1, max_bytes=500))
    assert result.truncated and len(result.output.encode()) <= 500
    assert json.loads(result.output)["partial"]
