"""The drain's logic (openchat/api/drain.py) without a server: what it waits for, when it
gives up, and what it hands back to the server. End to end: tests/test_drain.py."""

from __future__ import annotations

import asyncio
import signal

from openchat.api.drain import Drain


class _Server:
    """Stands in for uvicorn's Server: its SIGTERM handler is a bound method."""

    def __init__(self) -> None:
        self.exits: list[int] = []
        self.servers: list = []

    def handle_exit(self, signum, frame) -> None:
        self.exits.append(signum)


def _drain(grace: float) -> tuple[Drain, _Server, list[str]]:
    drain, server, aborted = Drain(grace), _Server(), []
    drain._server_handlers = {signal.SIGTERM: server.handle_exit,
                              signal.SIGINT: server.handle_exit}

    async def on_expired() -> None:
        aborted.append("abort")

    drain._on_expired = on_expired
    return drain, server, aborted


def test_waits_for_requests_in_flight_then_stops_the_server():
    async def scenario():
        drain, server, aborted = _drain(grace=5)
        with drain.request():
            drain._on_signal(signal.SIGTERM)
            assert drain.draining and drain.refusing()
            await asyncio.sleep(0.2)
            assert server.exits == []  # still one request in flight
        await asyncio.wait_for(drain._task, 1)
        assert server.exits == [signal.SIGTERM] and aborted == []

    asyncio.run(scenario())


def test_past_the_grace_period_what_runs_is_aborted():
    async def scenario():
        drain, server, aborted = _drain(grace=0.2)

        async def request_that_ends_when_aborted():
            with drain.request():
                while not aborted:
                    await asyncio.sleep(0.01)

        running = asyncio.create_task(request_that_ends_when_aborted())
        await asyncio.sleep(0)
        drain._on_signal(signal.SIGTERM)
        await asyncio.wait_for(drain._task, 2)
        await running
        assert aborted == ["abort"] and server.exits == [signal.SIGTERM]

    asyncio.run(scenario())


def test_a_second_signal_stops_at_once():
    async def scenario():
        drain, server, _ = _drain(grace=60)
        with drain.request():
            drain._on_signal(signal.SIGTERM)
            drain._on_signal(signal.SIGINT)
            assert server.exits == [signal.SIGINT]
            drain._task.cancel()

    asyncio.run(scenario())


def test_an_idle_server_stops_at_once():
    async def scenario():
        drain, server, _ = _drain(grace=60)
        drain._on_signal(signal.SIGTERM)
        await asyncio.wait_for(drain._task, 1)
        assert server.exits == [signal.SIGTERM]

    asyncio.run(scenario())
