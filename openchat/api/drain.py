"""Graceful drain: what the HTTP worker does between SIGTERM and its exit.

Docker, Kubernetes and systemd stop the service with SIGTERM to `bentoml serve`; its
process manager (circus) passes SIGTERM to the worker and, at the same moment, to the
worker's child processes, vLLM's EngineCore among them. The engine drains on its own
(its `shutdown_timeout`: it finishes the requests it holds, refuses new ones, then
exits). Uvicorn alone would stop accepting at once: connections sent meanwhile wait in
the listening socket's backlog and are reset when circus closes it. So the worker takes
SIGTERM over from uvicorn:

1. `draining` turns on: readiness fails, new requests get 503 `shutting_down` with
   `Connection: close` (the middleware asks `refusing()`); probes and /metrics answer.
2. In-flight requests, streamed or whole, run to their end, for up to `grace_s`.
3. Past the grace, `on_expired` aborts what still runs: each ends with 503
   `request_aborted` or, streamed, an error event, never a silently cut stream.
4. The listening socket is shut down, so later connections are refused, not reset, and
   uvicorn's own SIGTERM handling stops the server.

A second SIGTERM (or SIGINT) skips the wait and goes to uvicorn at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("openchat.lifecycle")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.in_flight = 0
        # False when the worker restarts under circus: the next worker takes the socket on.
        self.server_stops = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._server_handlers: dict[int, Any] = {}
        self._task: asyncio.Task[None] | None = None

    # -- the middleware's side --------------------------------------------------------------

    @contextmanager
    def request(self):
        """Count one request as in flight for as long as its response runs."""
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    # -- the signal's side ------------------------------------------------------------------

    def install(self, on_expired: Callable[[], Awaitable[Any]]) -> None:
        """Take SIGTERM and SIGINT over from the server (uvicorn), keeping its handlers to
        pass the signal on once drained. Call from the worker's event loop, after the
        server has installed its own handlers (a startup hook)."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("not in the main thread: SIGTERM stops the server without a drain")
            return
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            self._server_handlers[signum] = signal.getsignal(signum)

            def handle(signum: int, frame: Any) -> None:
                loop.call_soon_threadsafe(self._on_signal, signum)

            signal.signal(signum, handle)
        self._on_expired = on_expired

    def _on_signal(self, signum: int) -> None:
        if self.draining:  # a second signal: stop now
            logger.warning("second %s: stopping without waiting for %d requests",
                           signal.Signals(signum).name, self.in_flight)
            self._stop_server(signum)
            return
        self.draining = True
        self._task = asyncio.get_running_loop().create_task(self._drain(signum))

    async def _drain(self, signum: int) -> None:
        started = time.monotonic()
        logger.info("%s: draining %d requests in flight (grace %.0f s); new requests get 503",
                    signal.Signals(signum).name, self.in_flight, self.grace_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self.grace_s)
        except TimeoutError:
            logger.warning("grace period over: aborting %d requests still running",
                           self.in_flight)
            await self._on_expired()
            try:  # aborted requests end within moments; do not hang on one that does not
                await asyncio.wait_for(self._idle.wait(), timeout=10)
            except TimeoutError:
                logger.error("%d requests did not end after their abort", self.in_flight)
        logger.info("drained in %.1f s; stopping", time.monotonic() - started)
        self._stop_server(signum)

    def _stop_server(self, signum: int) -> None:
        self._stop_listening()
        handler = self._server_handlers.get(signum)
        if callable(handler):
            handler(signum, None)
        else:  # no server handler to hand over to: end the way the signal would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def refusing(self) -> bool:
        return self.draining

    def _stop_listening(self) -> None:
        """Stop accepting, and when the whole server stops, shut the listening socket
        down too, so that connections from now on are refused at once instead of waiting
        in its backlog to be reset when circus closes it. Circus shares the socket with
        the worker; a shut-down socket stops listening for every process holding it.
        Done in one step with no await between, so no connection slips in between."""
        server = getattr(self._server_handlers.get(signal.SIGTERM), "__self__", None)
        servers = getattr(server, "servers", None) or []  # uvicorn's asyncio Servers
        held = ([socket.socket(fileno=os.dup(sock.fileno()))
                 for listening in servers for sock in listening.sockets]
                if self.server_stops else [])
        for listening in servers:
            listening.close()
        for listener in held:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
