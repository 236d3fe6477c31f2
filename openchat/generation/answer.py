"""One choice's text on its way out, for chat and legacy completions alike.

An `Answer` is fed the engine's text deltas and returns what to send: plain text as it
is, or, when tools are offered, content and tool-call events from the incremental parser
(so streamed and whole answers are assembled by the same code). `finish` turns the
engine's finish reason into OpenAI's and is the server-side guarantee: a finished
structured answer must validate and finished tool calls must match their schemas. A
violation is a bug in the constraint path; it is logged and surfaced as a 500, never
returned as if valid.
"""

from __future__ import annotations

import logging

from openchat.generation.constraints import Constraint
from openchat.generation.events import AnswerEvent, TextDelta
from openchat.generation.toolformat import ToolPlan
from openchat.generation.toolparser import (
    ControlCharEscaper,
    ToolCall,
    ToolCallParser,
    check_calls,
)
from openchat.protocol.errors import APIError
from openchat.protocol.outputs import FINISH_REASONS

logger = logging.getLogger(__name__)


class Answer:
    def __init__(self, index: int, plan: ToolPlan | None = None,
                 constraint: Constraint | None = None) -> None:
        self.index = index
        self.plan = plan
        self.constraint = constraint
        self.parser = ToolCallParser() if plan is not None else None
        # JSON answers: raw control characters the grammar let into strings get escaped.
        json_kind = constraint is not None and constraint.kind.startswith("json")
        self._escape = ControlCharEscaper() if json_kind else None
        # The whole text is only kept when something has to check it.
        self._keep_text = plan is not None or constraint is not None
        self.text = ""
        self.tail: list[AnswerEvent] = []  # events flushed by finish()
        self._content: list[str] = []
        # A named call's opening was written into the prompt (ToolPlan.prefilled): the
        # parser reads it first, and its events go out with the first engine delta.
        self._opening: list[AnswerEvent] = []
        if plan is not None and plan.prefilled:
            self._opening = self.feed(plan.prefilled)

    def feed(self, delta: str) -> list[AnswerEvent]:
        """The events one engine delta makes: content text, tool-call starts, arguments."""
        if self._escape is not None:
            delta = self._escape(delta)
        if self._keep_text:
            self.text += delta
        if self.parser is None:
            return [TextDelta(delta)] if delta else []
        events = self._record(self.parser.feed(delta))
        if self._opening:
            events, self._opening = self._opening + events, []
        return events

    def finish(self, engine_reason: str | None) -> str:
        """OpenAI's finish_reason, after verifying what the engine finished."""
        reason = FINISH_REASONS.get(engine_reason or "stop", "stop")
        if self.parser is not None:
            # A prefilled call's close is certain once the engine stopped on its own: the
            # grammar allowed the end of turn only after whole arguments.
            end = self.plan.determined_end() if reason == "stop" else ""
            closed = self.feed(end) if end else []  # feed() sends a pending opening first
            self.tail = self._opening + closed + self._record(
                self.parser.finish(cut=reason != "stop"))
            self._opening = []
        if reason != "stop":
            return reason  # cut short: nothing claims to be complete
        if self.parser is not None and self.parser.complete_calls:
            self._check("tool call", "tool_call_invalid",
                        check_calls(self.plan, self.parser.complete_calls))
            return "tool_calls"
        if self.parser is not None:
            self._check("tool call", "tool_call_invalid",
                        check_calls(self.plan, []))  # "required" with no call is a fault
            if self.constraint is not None:  # tools beside response_format: the content
                self._check(f"{self.constraint.kind} output", "structured_output_invalid",
                            self.constraint.validate("".join(self._content)))
            return "stop"
        if self.constraint is not None:
            self._check(f"{self.constraint.kind} output", "structured_output_invalid",
                        self.constraint.validate(self.text))
        return reason

    def content(self) -> str | None:
        """With tools: the text outside call blocks ("" if none: the tool markup is never
        content, even when a cut-off call left nothing else); JSON output: the escaped
        text; else None, meaning the engine's text is the content as it is."""
        if self.parser is not None:
            return "".join(self._content)
        if self._escape is not None:
            return self.text
        return None

    def calls(self) -> list[ToolCall]:
        return self.parser.complete_calls if self.parser is not None else []

    def _check(self, what: str, code: str, problem: str | None) -> None:
        if problem is None:
            return
        logger.error("%s violation in choice %d: %s; text=%r",
                     what, self.index, problem, self.text[:2000])
        raise APIError(f"Choice {self.index} produced an invalid {what} ({problem}). This is "
                       "a server error and has been logged.", status=500,
                       type="server_error", code=code)

    def _record(self, events: list[AnswerEvent]) -> list[AnswerEvent]:
        self._content.extend(e.text for e in events if isinstance(e, TextDelta))
        return events
