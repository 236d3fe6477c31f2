"""Rate limits per key: pure arithmetic and formats, then the limiter on memory and Redis.

`limits`' memory storage reads `time.time()` itself and takes no clock, so the memory-only
tests swap the `time` module it (and openchat.access.ratelimit_memory) sees for a fake clock: windows of a
real minute, no sleeping. The tests that need no exact times run on both stores on the real
clock (`store`); Redis, which reads its own server clock, gets one real server for the module
and short real windows where time must pass. Two limiters on one Redis stand for replicas.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import limits.aio.storage.memory
import pytest
import redis
from limits.aio.storage import MemcachedStorage, MemoryStorage, RedisStorage
from limits.errors import ConfigurationError
from pydantic import ValidationError

from openchat.access import ratelimit, ratelimit_memory, ratelimit_redis
from openchat.access.ratelimit import (
    KeyLimits,
    RateLimited,
    RateLimiter,
    Window,
    format_duration,
    open_rate_limiter,
    refusal,
    retry_after_header,
)
from openchat.access.ratelimit_memory import MemoryRateLimiter, supports_refunds
from openchat.access.ratelimit_redis import RedisRateLimiter
from openchat.config import AuthSettings
from tests.redis_server import running_redis

T0 = 1_700_000_040.0  # the start of a fixed window for 1, 2 and 60 second windows
HEADER_NAMES = {
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
}


class FakeClock:
    """Stands in for the `time` module: only `time()` is read."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(T0 + 1)  # 59 s left in the current minute
    monkeypatch.setattr(limits.aio.storage.memory, "time", fake)
    monkeypatch.setattr(ratelimit_memory, "time", fake)
    return fake


def run(coroutine):
    return asyncio.run(coroutine)


def counts(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if "-reset-" not in name}


async def early_in_window(window: float, needed: float) -> None:
    """Wait until `needed` seconds fit before the current fixed window ends, so the steps
    that follow all land in one window and counts read whole."""
    while time.time() % window > window - needed:
        await asyncio.sleep(0.02)


class Store:
    """A storage URI, and the limiters a test opens on it (closed when `run` ends)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._opened: list[RateLimiter] = []

    def limiter(self, window: int = 60) -> RateLimiter:
        limiter = open_rate_limiter(self.uri, window=window)
        self._opened.append(limiter)
        return limiter

    def run(self, coroutine):
        async def closing():
            try:
                await early_in_window(60, 2)
                return await coroutine
            finally:
                for limiter in self._opened:
                    await limiter.aclose()

        return asyncio.run(closing())


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture
def redis_store(redis_url: str) -> Store:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    return Store(redis_url)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return Store("memory://")
    return request.getfixturevalue("redis_store")


# --- formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (-1, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"),
    (0.9996, "1s"), (1, "1s"), (8.64, "8.64s"), (59.6, "59.6s"), (60, "1m0s"),
    (90.5, "1m30.5s"), (360, "6m0s"), (3600, "1h0m0s"), (3725.25, "1h2m5.25s"),
])
def test_format_duration_follows_openai(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds, text", [(0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"),
                                           (59, "59"), (59.0000001, "59")])
def test_retry_after_is_whole_seconds_at_least_one(seconds, text):
    assert retry_after_header(seconds) == text


def test_key_limits_must_be_positive():
    with pytest.raises(ValueError, match="tpm"):
        KeyLimits(rpm=1, tpm=0, max_concurrency=1)


# --- window arithmetic --------------------------------------------------------------------

def test_window_counts_the_previous_window_by_its_share_left():
    window = Window(previous=10, current=2, left=30, length=60)
    assert window.count() == 7
    assert window.remaining(10) == 3
    assert window.remaining(5) == 0
    assert window.taken(3).remaining(10) == 0
    assert window.fits(10, 3) and not window.fits(10, 4)
    assert window.fits(7, 0) and not Window(0, 8, 30, 60).fits(7, 0)  # over the limit already


def test_window_from_storage_state():
    assert Window.observed(0, 0.0, 5, 100.0, length=60).left == 40
    assert Window.observed(3, 25.0, 0, 85.0, length=60).left == 25


def test_wait_while_the_previous_window_drains():
    window = Window(previous=10, current=2, left=30, length=60)
    assert window.seconds_until_fits(10, 3) == 0  # 7 used, 3 fit now
    assert window.seconds_until_fits(10, 5) == pytest.approx(6)  # 10*24/60 + 2 = 6 < 6+ε
    assert Window(previous=10, current=0, left=30, length=60).seconds_until_reset() == 24


def test_wait_until_the_current_window_drains_too():
    window = Window(previous=0, current=10, left=30, length=60)
    assert window.seconds_until_fits(10, 5) == pytest.approx(54)  # 10*(90-54)/60 = 6
    assert window.seconds_until_reset() == pytest.approx(84)
    assert Window(0, 0, 30, 60).seconds_until_reset() == 0
    with pytest.raises(ValueError):
        window.seconds_until_fits(10, 11)


def test_refusal_order_and_kinds():
    limits = KeyLimits(rpm=2, tpm=100, max_concurrency=1)
    empty, full = Window(0, 0, 30, 60), Window(0, 2, 30, 60)
    assert refusal(limits, 100, 0, empty, empty) is None
    never = refusal(limits, 101, 1, full, empty)
    assert never.kind == "tokens" and never.retry_after is None
    assert "never" in never.message and "retry-after" not in never.headers
    assert refusal(limits, 10, 1, full, empty).kind == "concurrency"
    assert refusal(limits, 10, 0, full, empty).kind == "requests"
    tokens = refusal(limits, 10, 0, empty, Window(0, 95, 30, 60))
    assert tokens.kind == "tokens" and "5 remain" in tokens.message
    assert set(tokens.headers) == HEADER_NAMES | {"retry-after"}


def test_only_storages_that_can_refund_are_accepted():
    assert supports_refunds(MemoryStorage)
    assert not supports_refunds(RedisStorage)  # rotates keys by renaming, no decr
    assert not supports_refunds(MemcachedStorage)  # decr is private


# --- the limiter, on a fake clock ---------------------------------------------------------

def test_requests_refused_at_rpm_plus_one_and_recover(clock):
    limits = KeyLimits(rpm=3, tpm=10_000, max_concurrency=10)

    async def scenario():
        limiter = open_rate_limiter("memory://")
        seen = []
        for _ in range(3):
            ticket = await limiter.admit("k", limits=limits, reserve_tokens=10)
            seen.append(ticket.headers["x-ratelimit-remaining-requests"])
            await limiter.settle(ticket, used_tokens=10)
        assert seen == ["2", "1", "0"]
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=10)
        error = refused.value
        assert error.kind == "requests"
        assert error.retry_after == pytest.approx(59)  # when the minute ends, 3 start to drain
        assert error.headers["retry-after"] == "59"
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        assert error.headers["x-ratelimit-reset-requests"] == "1m39s"  # 59 + 60 - 60/3
        assert limiter.in_flight("k") == 0
        clock.advance(58.9)
        with pytest.raises(RateLimited):
            await limiter.admit("k", limits=limits, reserve_tokens=10)
        clock.advance(0.2)
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=10)
        assert ticket.headers["x-ratelimit-remaining-requests"] == "0"
        await limiter.settle(ticket, used_tokens=10)

    run(scenario())


def test_success_headers_and_formats(clock):
    limits = KeyLimits(rpm=60, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = open_rate_limiter("async+memory://")  # the async scheme is accepted as well
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=100)
        assert ticket.headers == {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-reset-requests": "59s",  # one request drains when the minute ends
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-tokens": "1m58.4s",  # 59 + 60 - 60/100
        }
        second = await limiter.admit("k", limits=limits, reserve_tokens=100)
        assert second.headers["x-ratelimit-remaining-requests"] == "58"
        assert second.headers["x-ratelimit-remaining-tokens"] == "800"

    run(scenario())


def test_tokens_reserved_refunded_and_overuse_charged(clock):
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = open_rate_limiter("memory://")
        first = await limiter.admit("k", limits=limits, reserve_tokens=600)
        assert first.headers["x-ratelimit-remaining-tokens"] == "400"
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=600)
        assert refused.value.kind == "tokens"
        assert refused.value.retry_after == pytest.approx(78.9)  # 59 + 60 - 401*60/600
        await limiter.settle(first, used_tokens=100)  # refund 500
        assert (await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"] == "900"
        second = await limiter.admit("k", limits=limits, reserve_tokens=600)
        assert second.headers["x-ratelimit-remaining-tokens"] == "300"
        await limiter.settle(second, used_tokens=900)  # 300 more than reserved
        assert (await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"] == "0"
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=1)
        assert refused.value.kind == "tokens"

    run(scenario())


def test_overuse_may_go_past_the_limit(clock):
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = open_rate_limiter("memory://")
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=500)
        await limiter.settle(ticket, used_tokens=1500)  # spent is spent
        with pytest.raises(RateLimited) as refused:  # even a request taking no tokens waits
            await limiter.admit("k", limits=limits, reserve_tokens=0)
        assert refused.value.kind == "tokens"
        assert refused.value.headers["x-ratelimit-remaining-tokens"] == "0"
        assert refused.value.retry_after == pytest.approx(59 + 60 - 1001 * 60 / 1500)

    run(scenario())


def test_refund_reaches_the_previous_window_and_skips_older_ones(clock):
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = open_rate_limiter("memory://")
        clock.advance(49)  # T0 + 50
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=700)
        clock.advance(20)  # T0 + 70: the reservation is in the previous window, weight 50/60
        assert (await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"] == "417"
        await limiter.settle(ticket, used_tokens=0)
        assert (await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"] == "1000"

        old = await limiter.admit("k", limits=limits, reserve_tokens=600)
        clock.advance(130)  # two windows on: the reservation no longer counts
        await limiter.settle(old, used_tokens=0)  # nothing to refund, and no credit either
        full = await limiter.admit("k", limits=limits, reserve_tokens=1000)
        assert full.headers["x-ratelimit-remaining-tokens"] == "0"

    run(scenario())


# --- the limiter, on either store and the real clock ---------------------------------------

def test_a_request_larger_than_the_whole_limit_never_fits(store):
    limits = KeyLimits(rpm=10, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = store.limiter()
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=1001)
        error = refused.value
        assert error.kind == "tokens" and error.retry_after is None
        assert "never" in str(error) and "retry-after" not in error.headers
        assert error.headers["x-ratelimit-remaining-tokens"] == "1000"
        after = await limiter.peek("k", limits)
        assert after["x-ratelimit-remaining-requests"] == "10"
        assert limiter.in_flight("k") == 0

    store.run(scenario())


def test_concurrency_slot_taken_and_released_also_on_errors(store):
    limits = KeyLimits(rpm=100, tpm=10_000, max_concurrency=2)

    async def failing_request(limiter):
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=10)
        try:
            raise RuntimeError("client went away")
        finally:
            await limiter.settle(ticket, used_tokens=3)

    async def scenario():
        limiter = store.limiter()
        a = await limiter.admit("k", limits=limits, reserve_tokens=10)
        b = await limiter.admit("k", limits=limits, reserve_tokens=10)
        assert limiter.in_flight("k") == 2
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=10)
        assert refused.value.kind == "concurrency"
        assert refused.value.headers["retry-after"] == "1"
        assert refused.value.headers["x-ratelimit-remaining-requests"] == "98"
        await limiter.settle(a, used_tokens=10)
        assert limiter.in_flight("k") == 1
        with pytest.raises(RuntimeError):
            await failing_request(limiter)
        assert limiter.in_flight("k") == 1
        await limiter.settle(b, used_tokens=10)
        assert limiter.in_flight("k") == 0
        # two admitted, one failed: three requests; the refusal took none
        after = await limiter.peek("k", limits)
        assert after["x-ratelimit-remaining-requests"] == "97"
        assert after["x-ratelimit-remaining-tokens"] == str(10_000 - 23)

    store.run(scenario())


def test_refused_requests_take_nothing(store):
    limits = KeyLimits(rpm=5, tpm=100, max_concurrency=1)

    async def scenario():
        limiter = store.limiter()
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=50)
        before = await limiter.peek("k", limits)
        for reserve in (60, 10, 500):  # too many tokens, no free slot, never fits
            with pytest.raises(RateLimited):
                await limiter.admit("k", limits=limits, reserve_tokens=reserve)
        assert counts(await limiter.peek("k", limits)) == counts(before)  # resets: real time
        assert before["x-ratelimit-remaining-requests"] == "4"
        assert before["x-ratelimit-remaining-tokens"] == "50"
        assert limiter.in_flight("k") == 1
        await limiter.settle(ticket, used_tokens=50)

    store.run(scenario())


def test_settling_twice_does_nothing(store):
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = store.limiter()
        other = await limiter.admit("k", limits=limits, reserve_tokens=100)
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=500)
        await limiter.settle(ticket, used_tokens=200)
        await limiter.settle(ticket, used_tokens=0)
        assert limiter.in_flight("k") == 1  # `other` keeps its slot
        assert (await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"] == "700"
        await limiter.settle(other, used_tokens=100)
        assert limiter.in_flight("k") == 0

    store.run(scenario())


def test_charged_tokens_count_without_a_request_and_may_pass_the_limit(store):
    """What the batch runner does with a finished line: tokens only, never refused."""
    limits = KeyLimits(rpm=1, tpm=100, max_concurrency=1)

    async def scenario():
        limiter = store.limiter()
        assert (await limiter.token_window("k", limits)).count() == 0
        await limiter.charge("k", limits, 60)
        await limiter.charge("k", limits, 0)
        window = await limiter.token_window("k", limits)
        assert window.count() == 60 and window.fits(limits.tpm, 40)
        await limiter.charge("k", limits, 70)  # past the limit: spent is spent
        window = await limiter.token_window("k", limits)
        assert window.count() == 130 and not window.fits(limits.tpm, 1)
        headers = await limiter.peek("k", limits)
        assert headers["x-ratelimit-remaining-tokens"] == "0"
        assert headers["x-ratelimit-remaining-requests"] == "1"  # no request was counted
        assert limiter.in_flight("k") == 0
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=1)
        assert refused.value.kind == "tokens"

    store.run(scenario())


def test_keys_are_independent(store):
    limits = KeyLimits(rpm=1, tpm=100, max_concurrency=1)

    async def scenario():
        limiter = store.limiter()
        a = await limiter.admit("a", limits=limits, reserve_tokens=100)
        with pytest.raises(RateLimited):
            await limiter.admit("a", limits=limits, reserve_tokens=1)
        b = await limiter.admit("b", limits=limits, reserve_tokens=100)
        assert b.headers["x-ratelimit-remaining-requests"] == "0"
        assert limiter.in_flight("a") == limiter.in_flight("b") == 1
        await limiter.settle(a, used_tokens=100)
        await limiter.settle(b, used_tokens=100)

    store.run(scenario())


def test_real_clock_short_window_recovers_after_retry_after(store):
    limits = KeyLimits(rpm=2, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = store.limiter(window=1)
        while time.time() % 1 > 0.5:  # start early in a fixed window, so all three land in it
            await asyncio.sleep(0.02)
        for _ in range(2):
            await limiter.settle(await limiter.admit("k", limits=limits, reserve_tokens=1), 1)
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=1)
        assert refused.value.kind == "requests"
        assert 0 < refused.value.retry_after <= 1
        await asyncio.sleep(refused.value.retry_after + 0.05)
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=1)
        await limiter.settle(ticket, used_tokens=1)

    started = time.monotonic()
    store.run(scenario())
    assert time.monotonic() - started < 5  # up to 2 s of it spent waiting by `run`


# --- Redis: one budget for many replicas --------------------------------------------------

def test_replicas_share_requests_and_race_for_the_last_ones(redis_store):
    limits = KeyLimits(rpm=7, tpm=10_000, max_concurrency=100)

    async def scenario():
        a, b = redis_store.limiter(), redis_store.limiter()
        first = await a.admit("k", limits=limits, reserve_tokens=1)
        assert (await b.peek("k", limits))["x-ratelimit-remaining-requests"] == "6"
        # 20 requests at once through both replicas: each admission is one script, so
        # exactly the 6 left get in.
        replicas = [a, b] * 10
        results = await asyncio.gather(
            *(r.admit("k", limits=limits, reserve_tokens=1) for r in replicas),
            return_exceptions=True)
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert len(refused) == 14 and {r.kind for r in refused} == {"requests"}
        admitted = [(r, t) for r, t in zip(replicas, results) if not isinstance(t, Exception)]
        assert len(admitted) == 6
        assert a.in_flight("k") + b.in_flight("k") == 7  # each replica counts its own
        for replica, ticket in [(a, first), *admitted]:
            await replica.settle(ticket, used_tokens=1)
        assert a.in_flight("k") == b.in_flight("k") == 0

    redis_store.run(scenario())


def test_replicas_share_tokens_with_refunds_and_overuse(redis_store):
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=8)

    async def scenario():
        a, b = redis_store.limiter(), redis_store.limiter()
        first = await a.admit("k", limits=limits, reserve_tokens=600)
        with pytest.raises(RateLimited) as refused:
            await b.admit("k", limits=limits, reserve_tokens=600)
        assert refused.value.kind == "tokens" and refused.value.retry_after > 0
        assert refused.value.headers["x-ratelimit-remaining-tokens"] == "400"
        await a.settle(first, used_tokens=100)  # refund 500, seen by the other replica
        assert (await b.peek("k", limits))["x-ratelimit-remaining-tokens"] == "900"
        second = await b.admit("k", limits=limits, reserve_tokens=600)
        assert second.headers["x-ratelimit-remaining-tokens"] == "300"
        await b.settle(second, used_tokens=1200)  # 600 more than reserved: past the limit
        after = await a.peek("k", limits)
        assert after["x-ratelimit-remaining-tokens"] == "0"
        assert after["x-ratelimit-remaining-requests"] == "98"
        with pytest.raises(RateLimited) as refused:
            await a.admit("k", limits=limits, reserve_tokens=0)
        assert refused.value.kind == "tokens"

    redis_store.run(scenario())


def test_replicas_share_concurrency(redis_store):
    limits = KeyLimits(rpm=100, tpm=10_000, max_concurrency=2)

    async def scenario():
        a, b = redis_store.limiter(), redis_store.limiter()
        one = await a.admit("k", limits=limits, reserve_tokens=10)
        two = await b.admit("k", limits=limits, reserve_tokens=10)
        for replica in (a, b):
            with pytest.raises(RateLimited) as refused:
                await replica.admit("k", limits=limits, reserve_tokens=10)
            assert refused.value.kind == "concurrency"
            assert refused.value.headers["retry-after"] == "1"
        await a.settle(one, used_tokens=10)
        await a.settle(one, used_tokens=10)  # settling twice frees one slot only
        three = await b.admit("k", limits=limits, reserve_tokens=10)
        with pytest.raises(RateLimited):
            await a.admit("k", limits=limits, reserve_tokens=10)
        await b.settle(two, used_tokens=10)
        await b.settle(three, used_tokens=10)

    redis_store.run(scenario())


def _snapshot(url: str) -> dict:
    """Every key in Redis and its value, to compare before and after."""
    with redis.Redis.from_url(url) as client:
        return {key: (client.get(key) if client.type(key) == b"string"
                      else client.zrange(key, 0, -1, withscores=True))
                for key in client.keys("*")}


def test_a_refusal_takes_nothing_in_redis(redis_store):
    limits = KeyLimits(rpm=2, tpm=100, max_concurrency=1)

    async def scenario():
        limiter = redis_store.limiter()
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=50)
        before = _snapshot(redis_store.uri)
        assert len(before) == 3  # requests and tokens of this window, and the slots
        for reserve in (60, 10, 500):  # too many tokens, no free slot, never fits
            with pytest.raises(RateLimited):
                await limiter.admit("k", limits=limits, reserve_tokens=reserve)
        await limiter.settle(ticket, used_tokens=50)
        await limiter.settle(await limiter.admit("k", limits=limits, reserve_tokens=0), 0)
        before = _snapshot(redis_store.uri)
        with pytest.raises(RateLimited) as refused:  # no request left
            await limiter.admit("k", limits=limits, reserve_tokens=10)
        assert refused.value.kind == "requests"
        assert _snapshot(redis_store.uri) == before
        assert limiter.in_flight("k") == 0

    redis_store.run(scenario())


def test_counters_expire_and_a_dead_replicas_slot_lapses(redis_store, monkeypatch):
    monkeypatch.setattr(ratelimit_redis, "SLOT_LIFETIME_SECONDS", 1)
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=1)

    async def scenario():
        dead, alive = redis_store.limiter(window=2), redis_store.limiter(window=2)
        await dead.admit("k", limits=limits, reserve_tokens=10)  # never settled
        with redis.Redis.from_url(redis_store.uri) as client:
            ttls = {key: client.pttl(key) for key in client.keys("*")}
        assert all(0 < ttl <= 4000 for ttl in ttls.values()), ttls  # 2 windows at most
        with pytest.raises(RateLimited) as refused:
            await alive.admit("k", limits=limits, reserve_tokens=10)
        assert refused.value.kind == "concurrency"
        await asyncio.sleep(1.1)
        await alive.settle(await alive.admit("k", limits=limits, reserve_tokens=10), 10)

    redis_store.run(scenario())


def test_refunds_reach_the_previous_window_and_skip_older_ones_in_redis(redis_store):
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = redis_store.limiter(window=1)
        await early_in_window(1, 0.5)
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=700)
        await asyncio.sleep(1 - time.time() % 1 + 0.05)  # the next window: 700 count less
        assert int((await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"]) > 300
        await limiter.settle(ticket, used_tokens=0)
        assert (await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"] == "1000"

        old = await limiter.admit("k", limits=limits, reserve_tokens=600)
        await asyncio.sleep(2.05)  # two windows on: the reservation no longer counts
        await limiter.settle(old, used_tokens=0)  # nothing to refund, and no credit either
        await early_in_window(1, 0.5)
        full = await limiter.admit("k", limits=limits, reserve_tokens=1000)
        assert full.headers["x-ratelimit-remaining-tokens"] == "0"

    redis_store.run(scenario())


def test_an_unreachable_redis_refuses_to_admit_but_settling_never_raises(caplog):
    limits = KeyLimits(rpm=10, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = open_rate_limiter(f"redis://127.0.0.1:{_closed_port()}/0")
        with pytest.raises(redis.ConnectionError):
            await limiter.admit("k", limits=limits, reserve_tokens=10)
        ticket = ratelimit.Ticket("k", limits, 10, 0.0, {}, slot="lost")
        await limiter.settle(ticket, used_tokens=3)  # logged; the slot would lapse
        await limiter.aclose()

    run(scenario())
    assert "could not settle" in caplog.text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# --- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("uri, kind", [
    ("memory://", MemoryRateLimiter), ("async+memory://", MemoryRateLimiter),
    ("redis://cache:6379/0", RedisRateLimiter), ("rediss://user:secret@cache:6380/1",
                                                 RedisRateLimiter),
    ("async+redis://cache:6379/0", RedisRateLimiter),
])
def test_the_factory_picks_the_store_by_scheme(uri, kind):
    limiter = open_rate_limiter(uri, window=2)  # Redis connects lazily: nothing to reach here
    assert type(limiter) is kind and isinstance(limiter, RateLimiter)
    assert limiter.in_flight("k") == 0
    run(limiter.aclose())


def test_the_factory_refuses_windows_and_stores_it_cannot_use(monkeypatch):
    for uri in ("memory://", "redis://cache:6379/0"):
        with pytest.raises(ValueError, match="window"):
            open_rate_limiter(uri, window=0)
    monkeypatch.setattr(ratelimit_memory, "supports_refunds", lambda storage_class: False)
    with pytest.raises(ConfigurationError, match="token refunds"):
        open_rate_limiter("memory://")


def test_redis_is_imported_only_when_configured():
    probe = ("import sys; from openchat.access.ratelimit import open_rate_limiter; "
             "open_rate_limiter('memory://'); assert 'redis' not in sys.modules; "
             "open_rate_limiter('redis://cache:6379/0'); assert 'redis' in sys.modules")
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60, cwd=root, env=env)


@pytest.mark.parametrize("uri", ["memory://", "async+memory://", "redis://cache:6379/0",
                                 "rediss://user:secret@cache:6380/1"])
def test_storage_setting_accepts_memory_and_redis(uri):
    assert AuthSettings(rate_limit_storage=uri).rate_limit_storage == uri


@pytest.mark.parametrize("uri", ["memcached://cache:11211", "mongodb://db", "redis+cluster://c"])
def test_storage_setting_refuses_stores_that_cannot_refund(uri):
    with pytest.raises(ValidationError, match="memory://, redis:// or rediss://"):
        AuthSettings(rate_limit_storage=uri)
