"""Results onto HTTP: JSON bodies, Server-Sent Events, and the client hanging up.

A flow's result is a response object, a dict, or an async iterator of chunk dicts; this
module frames it. Errors mid-stream (the status line is gone) become one
`data: {"error": ...}` event followed by `data: [DONE]`, never a silently cut stream. A
client that goes away cancels the work, which aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from openchat.generation.engine import engine_error
from openchat.protocol.errors import APIError, error_body
from openchat.protocol.outputs import as_json
from openchat.telemetry import metrics

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def sse_stream(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    metrics.OPEN_STREAMS.inc()
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    except Exception as exc:  # the status line is gone: report in-band, then end cleanly
        error = exc if isinstance(exc, APIError) else engine_error(exc)
        if error is None:
            logger.exception("error while streaming")
            yield _sse(error_body("The server had an error while streaming.", "server_error"))
        else:
            yield _sse(error.body())
    finally:
        metrics.OPEN_STREAMS.dec()
    yield "data: [DONE]\n\n"


async def cancel_on_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`, cancelling it (and so aborting its engine requests) if the client
    goes away first; returns None in that case."""
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Let the cancellation land (the engine request is aborted on the way out).
            await asyncio.wait({task})
    if task.cancelled():
        logger.info("client disconnected from %s; request aborted", request.url.path)
        return None
    return task.result()


async def sse_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """The Responses API's framing: `event: <type>` before each event's data, no [DONE].
    The flow reports its own failures as events; anything else ends with an error event."""
    metrics.OPEN_STREAMS.inc()
    try:
        async for event in events:
            yield f"event: {event['type']}\n{_sse(event)}"
    except Exception:
        logger.exception("error while streaming a response")
        error = {"type": "error", "code": "server_error", "param": None,
                 "message": "The server had an error while streaming.", "sequence_number": -1}
        yield f"event: error\n{_sse(error)}"
    finally:
        metrics.OPEN_STREAMS.dec()


async def respond(request: Request, work: Awaitable[Any], *,
                  framing: Callable[[AsyncIterator[dict[str, Any]]], AsyncIterator[str]]
                  = sse_stream) -> Response:
    """Run `work` (cancelled if the client goes away) and frame what it returns: a dict or
    response object as JSON, an async iterator of chunks through `framing`."""
    try:
        result = await cancel_on_disconnect(request, work)
    except APIError:
        raise
    except Exception as exc:
        error = engine_error(exc)
        if error is None:
            raise
        raise error from None
    if result is None:
        return Response(status_code=499)
    if isinstance(result, dict):
        return JSONResponse(result)
    if hasattr(result, "__aiter__"):
        return StreamingResponse(
            framing(result), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return JSONResponse(as_json(result))


