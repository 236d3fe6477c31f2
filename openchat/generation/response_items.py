"""The Responses API's output items and stream events, built from one choice's events.

`ResponseAssembler` turns `TextDelta`/`CallStart`/`ArgumentsDelta` (and `ToolProgress` from
the server-tool loop) into output items (`message`, `function_call`, `file_search_call`,
`mcp_call`) and the events that report them, each with its `sequence_number`. The whole
Response and the streamed one come from the same assembler, so they agree. Items are
plain dicts of the `openai` types' dumped shape (tests/test_responses_flow.py holds them
to the types).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from openchat.generation.events import (
    AnswerEvent,
    ArgumentsDelta,
    CallStart,
    TextDelta,
    TraceEntry,
)
from openchat.protocol.responses import (
    FunctionCallItem,
    MessageItem,
    ResponseRequest,
    ServerCallItem,
)

FILE_SEARCH = "file_search"  # the server tool behind a `file_search` tool
SERVER_LABEL = "openchat"  # other server tools show up as MCP calls to this "server"
RESULTS_INCLUDE = "file_search_call.results"  # OpenAI returns search results only if asked

# The text's citations: `[n]` markers -> file_citation annotations.
Citations = Callable[[str], list[dict[str, Any]]]


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseAssembler:
    """Output items from one choice's events, and the stream events that report them."""

    def __init__(self, request: ResponseRequest, response_id: str,
                 citations: Citations | None = None) -> None:
        self.request = request
        self.id = response_id
        self.created_at = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.sequence = 0
        self._citations = citations
        self._namespaces = request.namespaces()
        self._message: dict[str, Any] | None = None  # the message item being written
        self._calls: dict[int, dict[str, Any]] = {}  # parser index -> function_call item
        self._server: dict[str, dict[str, Any]] = {}  # server call id -> its item

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        response = self.response(status="in_progress")
        return [self.event("response.created", response=response),
                self.event("response.in_progress", response=response)]

    def feed(self, events: list[AnswerEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, TextDelta):
                if not event.text:
                    continue
                if self._message is None:
                    out += self._open_message()
                part = self._message["content"][0]
                part["text"] += event.text
                out.append(self.event("response.output_text.delta", **self._where(self._message),
                                      content_index=0, delta=event.text, logprobs=[]))
            elif isinstance(event, CallStart):
                out += self._close_message("completed")
                item = {"id": _item_id("fc"), "type": "function_call", "status": "in_progress",
                        "arguments": "", "call_id": event.id, "name": event.name}
                if event.name in self._namespaces:
                    item["namespace"] = self._namespaces[event.name]
                self._calls[event.index] = item
                out += self._add(item)
            elif isinstance(event, ArgumentsDelta):
                item = self._calls[event.index]
                item["arguments"] += event.text
                out.append(self.event("response.function_call_arguments.delta",
                                      **self._where(item), delta=event.text))
        return out

    def server_call(self, entry: TraceEntry) -> list[dict[str, Any]]:
        """A server tool started (`entry.status` "running") or finished."""
        item = self._server.get(entry.id)
        if item is None:
            out = self._close_message("completed")
            item = _server_item(entry)
            self._server[entry.id] = item
            out += self._add(item)
            if item["type"] == "file_search_call":
                return out + [self.event("response.file_search_call.in_progress",
                                         **self._where(item)),
                              self.event("response.file_search_call.searching",
                                         **self._where(item))]
            return out + [self.event("response.mcp_call_arguments.done", **self._where(item),
                                     arguments=item["arguments"]),
                          self.event("response.mcp_call.in_progress", **self._where(item))]
        failed = entry.status != "ok"
        item["status"] = "failed" if failed else "completed"
        out = []
        if item["type"] == "file_search_call":
            # OpenAI's stream has no file_search_call.failed event: a failed search is
            # told by the item's status in output_item.done alone.
            if not failed:
                if RESULTS_INCLUDE in (self.request.include or []):
                    item["results"] = _search_results(entry.result)
                out.append(self.event("response.file_search_call.completed",
                                      **self._where(item)))
        else:
            item["output"] = entry.result
            if failed:
                item["error"] = {"type": "mcp_tool_execution_error", "content": entry.result}
            out.append(self.event(f"response.mcp_call.{item['status']}",
                                  **self._where(item)))
        return out + [self.event("response.output_item.done", **self._where(item, id=False),
                                 item=_copy(item))]

    def finish(self, reason: str, complete_call_ids: set[str]) -> list[dict[str, Any]]:
        """Close every open item; `reason` is the Answer's finish reason."""
        status = "incomplete" if reason == "length" else "completed"
        out = self._close_message(status)
        for item in self._calls.values():
            if item["status"] != "in_progress":
                continue
            item["status"] = "completed" if item["call_id"] in complete_call_ids else "incomplete"
            out.append(self.event("response.function_call_arguments.done", **self._where(item),
                                  name=item["name"], arguments=item["arguments"]))
            out.append(self.event("response.output_item.done", **self._where(item, id=False),
                                  item=dict(item)))
        return out

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.output.append(item)
        return [self.event("response.output_item.added", output_index=len(self.output) - 1,
                           item=_copy(item))]

    def _open_message(self) -> list[dict[str, Any]]:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._message = {"id": _item_id("msg"), "type": "message", "role": "assistant",
                         "status": "in_progress", "content": [part]}
        self.output.append(self._message)
        added = self.event("response.output_item.added", output_index=len(self.output) - 1,
                           item={**self._message, "content": []})
        return [added, self.event("response.content_part.added", **self._where(self._message),
                                 content_index=0, part={**part, "text": ""})]

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        message, self._message = self._message, None
        if message is None:
            return []
        message["status"] = status
        part = message["content"][0]
        where = self._where(message)
        out = []
        if self._citations is not None:
            part["annotations"] = self._citations(part["text"])
            out += [self.event("response.output_text.annotation.added", **where,
                               content_index=0, annotation_index=i, annotation=annotation)
                    for i, annotation in enumerate(part["annotations"])]
        return out + [
            self.event("response.output_text.done", **where, content_index=0,
                       text=part["text"], logprobs=[]),
            self.event("response.content_part.done", **where, content_index=0,
                       part=_copy(part)),
            self.event("response.output_item.done", **self._where(message, id=False),
                       item=_copy(message))]

    def _where(self, item: dict[str, Any], id: bool = True) -> dict[str, Any]:
        where: dict[str, Any] = {"output_index": self.output.index(item)}
        if id:
            where["item_id"] = item["id"]
        return where

    def response(self, *, status: str, reason: str | None = None,
                 usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        request = self.request
        text_format = request.text_format
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if reason == "length"
            and status == "incomplete" else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {},
            "model": request.model,
            "output": _copy(self.output) if status != "in_progress" else [],
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id,
            "store": request.store,
            "temperature": request.temperature,
            "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True)
                     if text_format is not None else {"type": "text"}},
            "tool_choice": _tool_choice(request),
            "tools": [tool.as_response_tool() for tool in request.tools or []],
            "top_p": request.top_p,
            "truncation": request.truncation or "disabled",
            "usage": usage,
            "user": request.user,
        }


def _copy(value: Any) -> Any:
    """A deep copy of plain JSON data (items keep changing after an event reports them)."""
    return json.loads(json.dumps(value))


def _server_item(entry: TraceEntry) -> dict[str, Any]:
    if entry.name == FILE_SEARCH:
        return {"id": _item_id("fs"), "type": "file_search_call", "status": "in_progress",
                "queries": [str(entry.arguments.get("query", ""))], "results": None}
    return {"id": _item_id("mcp"), "type": "mcp_call", "status": "in_progress",
            "server_label": SERVER_LABEL, "name": entry.name,
            "arguments": json.dumps(entry.arguments), "output": None, "error": None}


def _search_results(result: str | None) -> list[dict[str, Any]]:
    """The file_search tool's JSON result as OpenAI's `results` entries."""
    try:
        hits = json.loads(result or "")["results"]
    except (ValueError, KeyError, TypeError):
        return []
    return [{"file_id": hit["file_id"], "filename": hit["filename"], "score": hit["score"],
             "text": hit["text"], "attributes": {}} for hit in hits]


def _tool_choice(request: ResponseRequest) -> str | dict[str, Any]:
    choice = request.tool_choice
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else choice.model_dump()


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


# -- items as stored and listed -----------------------------------------------------------

def input_item_objects(items: Sequence[Any]) -> list[dict[str, Any]]:
    """This request's input items as OpenAI lists them (with ids and statuses)."""
    objects = []
    for item in items:
        if isinstance(item, MessageItem):
            objects.append({"id": _item_id("msg"), "type": "message", "role": item.role,
                            "status": "completed",
                            "content": [{"type": "input_text", "text": item.text()}]})
        elif isinstance(item, FunctionCallItem):
            objects.append({"id": _item_id("fc"), "type": "function_call", "status": "completed",
                            "call_id": item.call_id, "name": item.name,
                            "arguments": item.arguments})
        elif isinstance(item, ServerCallItem):
            objects.append(item.model_dump())
        else:
            objects.append({"id": _item_id("fco"), "type": "function_call_output",
                            "status": "completed", "call_id": item.call_id,
                            "output": item.text()})
    return objects


def conversation_after(history: list[dict[str, Any]], inputs: list[dict[str, Any]],
                       response: dict[str, Any]) -> list[dict[str, Any]]:
    """What `previous_response_id` continues: the history, this input, this output."""
    return [*history, *inputs, *response["output"]]
