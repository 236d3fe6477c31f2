"""A scripted engine implementing `EngineClient`, for unit tests of the flows.

Each `generate` call takes the next scripted reply: the text pieces every choice emits,
one token per piece, the last piece carrying the finish reason. What the flows asked for
(prompt ids, SamplingParams, request id) is recorded, and so is an early close, which is
how a flow aborts its engine request. It proves stream assembly and the contracts between
the layers; that a feature works end to end is the e2e tests' job, on the real engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeChoice:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Any]] | None = None
    finish_reason: str | None = None


@dataclass
class FakeOutput:
    outputs: list[FakeChoice]
    num_cached_tokens: int = 0


@dataclass
class Reply:
    pieces: list[str]
    finish_reason: str = "stop"
    cached_tokens: int = 0  # prompt tokens the prefix cache served, on every step


@dataclass
class Call:
    prompt_ids: list[int]
    params: Any
    request_id: str
    closed_early: bool = False


@dataclass
class FakeEngine:
    replies: list[Reply] = field(default_factory=list)
    max_model_len: int = 8192
    healthy: bool = True
    calls: list[Call] = field(default_factory=list)

    @property
    def is_healthy(self) -> bool:
        return self.healthy

    def reply(self, *pieces: str, finish_reason: str = "stop",
              cached_tokens: int = 0) -> FakeEngine:
        self.replies.append(Reply(list(pieces), finish_reason, cached_tokens))
        return self

    async def generate(self, prompt_ids: list[int], params: Any,
                       request_id: str) -> AsyncIterator[FakeOutput]:
        call = Call(list(prompt_ids), params, request_id)
        self.calls.append(call)
        reply = self.replies.pop(0)
        finished = False
        try:
            for step, piece in enumerate(reply.pieces):
                last = step == len(reply.pieces) - 1
                yield FakeOutput([
                    FakeChoice(i, piece, [100 + step], None, reply.finish_reason if last else None)
                    for i in range(params.n)
                ], reply.cached_tokens)
            finished = True
        finally:
            call.closed_early = not finished
