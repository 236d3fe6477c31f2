"""Rate limits per key: pure arithmetic and formats, then the limiter on memory storage.

`limits`' memory storage reads `time.time()` itself and takes no clock, so most limiter tests
swap the `time` module it (and openchat.ratelimit) sees for a fake clock: windows of a real
minute, no sleeping. One test runs on the real clock with a one-second window.
"""

from __future__ import annotations

import asyncio
import time

import limits.aio.storage.memory
import pytest
from limits.aio.storage import MemcachedStorage, MemoryStorage, RedisStorage

from openchat import ratelimit
from openchat.ratelimit import (
    KeyLimits,
    RateLimited,
    RateLimiter,
    Window,
    format_duration,
    refusal,
    retry_after_header,
    supports_refunds,
)

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
    monkeypatch.setattr(ratelimit, "time", fake)
    return fake


def run(coroutine):
    return asyncio.run(coroutine)


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
        limiter = RateLimiter("memory://")
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
        limiter = RateLimiter("async+memory://")  # the async scheme is accepted as well
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
        limiter = RateLimiter("memory://")
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
        limiter = RateLimiter("memory://")
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
        limiter = RateLimiter("memory://")
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


def test_a_request_larger_than_the_whole_limit_never_fits(clock):
    limits = KeyLimits(rpm=10, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = RateLimiter("memory://")
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("k", limits=limits, reserve_tokens=1001)
        error = refused.value
        assert error.kind == "tokens" and error.retry_after is None
        assert "never" in str(error) and "retry-after" not in error.headers
        assert error.headers["x-ratelimit-remaining-tokens"] == "1000"
        after = await limiter.peek("k", limits)
        assert after["x-ratelimit-remaining-requests"] == "10"
        assert limiter.in_flight("k") == 0

    run(scenario())


def test_concurrency_slot_taken_and_released_also_on_errors(clock):
    limits = KeyLimits(rpm=100, tpm=10_000, max_concurrency=2)

    async def failing_request(limiter):
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=10)
        try:
            raise RuntimeError("client went away")
        finally:
            await limiter.settle(ticket, used_tokens=3)

    async def scenario():
        limiter = RateLimiter("memory://")
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

    run(scenario())


def test_refused_requests_take_nothing(clock):
    limits = KeyLimits(rpm=5, tpm=100, max_concurrency=1)

    async def scenario():
        limiter = RateLimiter("memory://")
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=50)
        before = await limiter.peek("k", limits)
        for reserve in (60, 10, 500):  # too many tokens, no free slot, never fits
            with pytest.raises(RateLimited):
                await limiter.admit("k", limits=limits, reserve_tokens=reserve)
        assert await limiter.peek("k", limits) == before
        assert before["x-ratelimit-remaining-requests"] == "4"
        assert before["x-ratelimit-remaining-tokens"] == "50"
        assert limiter.in_flight("k") == 1
        await limiter.settle(ticket, used_tokens=50)

    run(scenario())


def test_settling_twice_does_nothing(clock):
    limits = KeyLimits(rpm=100, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = RateLimiter("memory://")
        other = await limiter.admit("k", limits=limits, reserve_tokens=100)
        ticket = await limiter.admit("k", limits=limits, reserve_tokens=500)
        await limiter.settle(ticket, used_tokens=200)
        await limiter.settle(ticket, used_tokens=0)
        assert limiter.in_flight("k") == 1  # `other` keeps its slot
        assert (await limiter.peek("k", limits))["x-ratelimit-remaining-tokens"] == "700"
        await limiter.settle(other, used_tokens=100)
        assert limiter.in_flight("k") == 0

    run(scenario())


def test_keys_are_independent(clock):
    limits = KeyLimits(rpm=1, tpm=100, max_concurrency=1)

    async def scenario():
        limiter = RateLimiter("memory://")
        a = await limiter.admit("a", limits=limits, reserve_tokens=100)
        with pytest.raises(RateLimited):
            await limiter.admit("a", limits=limits, reserve_tokens=1)
        b = await limiter.admit("b", limits=limits, reserve_tokens=100)
        assert b.headers["x-ratelimit-remaining-requests"] == "0"
        assert limiter.in_flight("a") == limiter.in_flight("b") == 1
        await limiter.settle(a, used_tokens=100)
        await limiter.settle(b, used_tokens=100)

    run(scenario())


# --- the limiter, on the real clock -------------------------------------------------------

def test_real_clock_short_window_recovers_after_retry_after():
    limits = KeyLimits(rpm=2, tpm=1000, max_concurrency=8)

    async def scenario():
        limiter = RateLimiter("memory://", window=1)
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
    run(scenario())
    assert time.monotonic() - started < 3
