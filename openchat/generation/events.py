"""What one generated choice emits on its way out, as typed events.

The tool-call parser and `Answer` produce `TextDelta`, `CallStart` and `ArgumentsDelta`;
the server-tool loop adds `ToolProgress`. The flows turn them into OpenAI chunks (and the
whole answer is assembled from the same events), so no code indexes into tuples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Content text (never tool-call markup)."""

    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    """A tool call begins: its index in the choice, id and function name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ArgumentsDelta:
    """A fragment of the arguments of call `index`."""

    index: int
    text: str


@dataclass
class TraceEntry:
    """One server tool call, as the response reports it."""

    id: str
    name: str
    arguments: dict[str, Any]
    step: int
    status: str = "running"  # "running", then "ok" or "error"
    result: str | None = None  # what the model read
    duration_ms: float | None = None
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True, slots=True)
class ToolProgress:
    """A server-side tool started or finished (the trace entry as it stands)."""

    entry: TraceEntry


AnswerEvent = TextDelta | CallStart | ArgumentsDelta
