"""Model output -> OpenAI tool calls, incrementally, for both whole and streamed answers.

The parser is fed text deltas and emits events: text to show as content, the start of a
call (id and name), argument fragments, the end of a call. A whole answer is one big
delta, so streamed and non-streamed answers are assembled by the same code.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

from openchat.generation.events import AnswerEvent, ArgumentsDelta, CallStart, TextDelta
from openchat.generation.toolformat import CALL_END, CALL_OPEN, ToolPlan

_HEADER = re.compile(r'\{"name":("(?:[^"\\]|\\.)*"),"arguments":')


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class ControlCharEscaper:
    """Escapes raw control characters inside JSON strings, delta by delta.

    xgrammar lets a byte-fallback token such as <0x1A> into a string that has length
    bounds (in structural tags and in plain JSON-schema output alike), although JSON
    forbids raw control characters there; clients' strict parsers would then reject it. Escaping them as \\u00XX keeps the
    value (and its length) and makes the text strict JSON, identically for streamed and
    whole answers.
    """

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False

    def __call__(self, text: str) -> str:
        out = []
        for char in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                elif char < " ":
                    out.append(f"\\u{ord(char):04x}")
                    continue
            elif char == '"':
                self.in_string = True
            out.append(char)
        return "".join(out)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""
    complete: bool = False
    escape: ControlCharEscaper = field(default_factory=ControlCharEscaper, repr=False)


def _held_back(buffer: str, marker: str) -> int:
    """Length of the longest suffix of `buffer` that could begin `marker`."""
    for size in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if marker.startswith(buffer[-size:]):
            return size
    return 0


@dataclass
class ToolCallParser:
    state: str = "text"  # "text", "header", "arguments"
    buffer: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    text_seen: bool = False
    pending_space: str = ""

    def feed(self, delta: str) -> list[AnswerEvent]:
        self.buffer += delta
        events: list[AnswerEvent] = []
        while True:
            before = (self.state, len(self.buffer))
            if self.state == "text":
                self._scan_text(events)
            elif self.state == "header":
                self._scan_header(events)
            else:
                self._scan_arguments(events)
            if (self.state, len(self.buffer)) == before:
                return events

    def finish(self, cut: bool = False) -> list[AnswerEvent]:
        """Flush at the end of generation: trailing text is content; a call cut short
        (max_tokens) stays incomplete and is not returned as a call. When the generation
        was `cut`, text held back because it could begin a call (`<tool_ca`) is the start
        of one: dropped, so the markup never reaches the client."""
        events: list[AnswerEvent] = []
        if self.state == "text" and self.buffer and not cut:
            self._emit_text(self.buffer, events)
        self.buffer = ""
        return events

    @property
    def complete_calls(self) -> list[ToolCall]:
        return [call for call in self.calls if call.complete]

    def _emit_text(self, text: str, events: list[AnswerEvent]) -> None:
        # Whitespace around calls (the newline between two calls, the space before one)
        # is not content: trailing whitespace is held until real text follows, so the
        # content is the same however the text was split into deltas.
        core = text.rstrip()
        if not core:
            self.pending_space += text
            return
        core = self.pending_space + core if self.text_seen else core.lstrip()
        self.pending_space = text[len(text.rstrip()):]
        self.text_seen = True
        events.append(TextDelta(core))

    def _scan_text(self, events: list[AnswerEvent]) -> None:
        start = self.buffer.find(CALL_OPEN)
        if start >= 0:
            if start:
                self._emit_text(self.buffer[:start], events)
            self.buffer = self.buffer[start + len(CALL_OPEN):]
            self.state = "header"
            return
        keep = _held_back(self.buffer, CALL_OPEN)
        ready = self.buffer[: len(self.buffer) - keep]
        if ready:
            self._emit_text(ready, events)
            self.buffer = self.buffer[len(ready):]

    def _scan_header(self, events: list[AnswerEvent]) -> None:
        match = _HEADER.match(self.buffer)
        if match is None:
            return
        call = ToolCall(id=new_call_id(), name=json.loads(match.group(1)))
        self.calls.append(call)
        events.append(CallStart(len(self.calls) - 1, call.id, call.name))
        self.buffer = self.buffer[match.end():]
        self.state = "arguments"

    def _arguments_end(self, call: ToolCall) -> int:
        """Where the call's closing `}</tool_call>` starts in the buffer, or -1. A string
        argument may itself contain that text, so an end only counts once the arguments
        before it are a whole JSON value."""
        end = self.buffer.find(CALL_END)
        while end >= 0 and not _is_json(call.arguments + self.buffer[:end]):
            end = self.buffer.find(CALL_END, end + 1)
        return end

    def _scan_arguments(self, events: list[AnswerEvent]) -> None:
        call, index = self.calls[-1], len(self.calls) - 1
        end = self._arguments_end(call)
        if end >= 0:
            fragment, self.buffer = self.buffer[:end], self.buffer[end + len(CALL_END):]
            call.complete = True
            self.state = "text"
        else:
            keep = len(CALL_END) - 1
            fragment = self.buffer[: max(0, len(self.buffer) - keep)]
            self.buffer = self.buffer[len(fragment):]
        fragment = call.escape(fragment)
        if fragment:
            call.arguments += fragment
            events.append(ArgumentsDelta(index, fragment))


def _is_json(text: str) -> bool:
    try:
        json.loads(text, strict=False)  # raw control characters are escaped later
    except ValueError:
        return False
    return True


def check_calls(plan: ToolPlan, calls: list[ToolCall]) -> str | None:
    """What is wrong with finished calls (None if nothing): the server-side guarantee."""
    if plan.mode != "auto" and not calls:
        return "no tool call although one was required"
    if (plan.mode == "named" or not plan.parallel) and len(calls) > 1:
        return f"{len(calls)} tool calls where one was allowed"
    for call in calls:
        tool = plan.tools.get(call.name)
        if tool is None or (plan.named and call.name != plan.named):
            return f"call to unexpected function {call.name!r}"
        try:
            arguments = json.loads(call.arguments)
        except ValueError as exc:
            return f"arguments of {call.name} are not JSON: {exc}"
        error = next(iter(tool.validator.iter_errors(arguments)), None)
        if error is not None:
            return f"arguments of {call.name} do not match: {error.message}"
    return None
