"""Engine streams as the flows consume them: several requests merged into one response,
or one request collected to its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from openchat.generation.engine import EngineClient, cached_tokens, final_only
from openchat.protocol.outputs import ChoiceState

if TYPE_CHECKING:
    from vllm import SamplingParams

T = TypeVar("T")
_DONE = object()


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Yield (stream index, item) as items arrive from any stream.

    If the consumer stops early (client gone) or a stream fails, every producer task is
    cancelled, which makes the engine abort the requests behind them.
    """
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
        except BaseException as exc:  # re-raised in the consumer
            await queue.put((index, exc))
            return
        await queue.put((index, _DONE))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Collected:
    """One engine request run to its end: each choice, and the prompt tokens its prefix
    cache served."""

    states: list[ChoiceState]
    cached_tokens: int = 0


async def collect(engine: EngineClient, prompt_ids: list[int], params: SamplingParams,
                  request_id: str, n: int) -> Collected:
    """Run one engine request to the end, gathering each choice's output. The engine is
    asked for the final output only (one instead of one per token); a choice's state
    takes deltas and whole outputs alike."""
    collected = Collected([ChoiceState(index=i) for i in range(n)])
    async for output in engine.generate(prompt_ids, final_only(params), request_id):
        collected.cached_tokens = max(collected.cached_tokens, cached_tokens(output))
        for choice in output.outputs:
            collected.states[choice.index].add(choice)
    return collected
