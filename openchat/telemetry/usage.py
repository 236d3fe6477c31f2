"""Token usage of the request being served, gathered where tokens really flow.

The middleware opens a `UsageMeter` per HTTP request; the engine adds every prompt it
submits and every token it produces (all choices, every step of a tool loop, typed APIs
included), /v1/embeddings adds its input tokens. Rate limits settle on it and the audit
log reports it. A context variable carries it: tasks started while serving the request
(disconnect watchers, merged streams) inherit the same meter.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field

_current: ContextVar[UsageMeter | None] = ContextVar("openchat_usage", default=None)


@dataclass
class UsageMeter:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, served by the engine's prefix cache
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None  # for the service-side time to first token

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def start_meter() -> UsageMeter:
    """A fresh meter for the current request (and the tasks it starts)."""
    meter = UsageMeter()
    _current.set(meter)
    return meter


def add_prompt(tokens: int) -> None:
    meter = _current.get()
    if meter is not None:
        meter.prompt_tokens += tokens


def add_cached(tokens: int) -> None:
    meter = _current.get()
    if meter is not None:
        meter.cached_tokens += tokens


def add_completion(tokens: int, first_token_at: float | None = None) -> None:
    """`first_token_at` (a perf_counter time): when the first of these tokens came, for a
    request whose tokens are counted only at its end; default: now."""
    meter = _current.get()
    if meter is not None:
        meter.completion_tokens += tokens
        if tokens and meter.first_token_at is None:
            meter.first_token_at = first_token_at or time.perf_counter()
