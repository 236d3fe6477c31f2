"""The server-side tool registry: name -> description, JSON schema, async handler, scope.

A tool is a typed async function; its JSON schema comes from the signature (pydantic), its
description from the docstring, so the model sees exactly what the handler accepts. A
handler's exception becomes an error result for the model, never a failed request, and
every result is cut to a byte budget before it goes back into the prompt.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

Handler = Callable[..., Awaitable[Any]]


class ToolArgumentsError(ValueError):
    """Arguments that do not match the tool's schema."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    scope: str
    arguments: type[BaseModel]
    handler: Handler

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments, as the model and OpenAI clients see it."""
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return schema

    def definition(self) -> dict[str, Any]:
        """The OpenAI `tools` entry for this tool."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters,
        }}

    def validate(self, arguments: dict[str, Any]) -> BaseModel:
        try:
            return self.arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ToolArgumentsError(problems) from None

    async def call(self, arguments: dict[str, Any]) -> Any:
        """Validate, then run the handler with the validated values."""
        values = self.validate(arguments)
        return await self.handler(**{name: getattr(values, name)
                                     for name in type(values).model_fields})


@dataclass
class ToolResult:
    """One executed call, as it goes back to the model and into the response's trace."""

    name: str
    arguments: dict[str, Any]
    output: str  # what the model reads: JSON of the result, or of {"error": ...}
    ok: bool
    duration_ms: float
    truncated: bool = False


@dataclass
class Registry:
    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self.tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    async def run(self, name: str, arguments: dict[str, Any], *, timeout: float,
                  max_bytes: int) -> ToolResult:
        """Run one call to the end: errors and timeouts become the model's result."""
        started = time.perf_counter()
        tool = self.tools.get(name)
        ok = False
        try:
            if tool is None:
                raise ToolArgumentsError(f"no server tool named {name!r}")
            value = await asyncio.wait_for(tool.call(arguments), timeout)
            output, ok = _to_json(value), True
        except asyncio.TimeoutError:
            output = _to_json({"error": f"{name} did not finish within {timeout:g} s"})
        except Exception as exc:  # a tool's failure is information for the model
            output = _to_json({"error": f"{type(exc).__name__}: {exc}"})
        output, truncated = _cut(output, max_bytes)
        return ToolResult(name, arguments, output, ok,
                          round((time.perf_counter() - started) * 1000, 1), truncated)


def tool(scope: str, *, name: str | None = None,
         description: str | None = None) -> Callable[[Handler], Tool]:
    """Make a Tool of a typed async function: `@tool(SQL_SCOPE) async def list_tables()`.

    Parameters need annotations; `Annotated[int, Field(ge=1, description=...)]` adds bounds
    and descriptions the model sees.
    """

    def wrap(handler: Handler) -> Tool:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"{handler.__name__} must be an async function")
        fields: dict[str, Any] = {}
        for param in inspect.signature(handler, eval_str=True).parameters.values():
            if param.annotation is inspect.Parameter.empty:
                raise TypeError(f"{handler.__name__}({param.name}) needs a type annotation")
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (param.annotation, default)
        tool_name = name or handler.__name__
        arguments = create_model(f"{tool_name}_arguments", __config__=_STRICT, **fields)
        text = description or inspect.cleandoc(handler.__doc__ or "").strip()
        if not text:
            raise TypeError(f"{tool_name} needs a description (docstring)")
        return Tool(tool_name, text, scope, arguments, handler)

    return wrap


_STRICT = ConfigDict(extra="forbid")


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _cut(output: str, max_bytes: int) -> tuple[str, bool]:
    """Keep the result within `max_bytes` of UTF-8, still valid JSON for the model."""
    data = output.encode()
    if len(data) <= max_bytes:
        return output, False
    head = data[: max(max_bytes - 64, 0)].decode(errors="ignore")
    while True:  # escaping can grow the text again: shrink until the JSON fits
        cut = _to_json({"truncated": True, "partial": head})
        excess = len(cut.encode()) - max_bytes
        if excess <= 0 or not head:
            return cut, True
        head = head[: max(len(head) - excess, 0)]
