"""Per-key rate limits: requests and tokens per minute, and requests in flight.

`RateLimiter.admit` checks a request against its key's `KeyLimits` and takes what it needs
(one request, the tokens it may use, a concurrency slot) or raises `RateLimited` having taken
nothing; `RateLimiter.settle` gives the slot back and corrects the token reservation to what
was really used. Headers carry OpenAI's names and formats, on success and on refusal.

Windows are `limits`' sliding window counter (why: see `SlidingWindowCounterRateLimiter`
below). Its count is the current fixed window's hits plus the previous window's, weighted by
the share of that window still inside the sliding one; `Window` does that arithmetic for
headers and retry delays, so it is testable without storage or event loop.

Storage: memory:// keeps counts in this process (one budget per replica); redis:// and
rediss:// keep them in one Redis shared by all replicas (ratelimit_redis.py, same windows,
headers and refusals).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from math import ceil, floor
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.storage.base import TimestampedSlidingWindow

if TYPE_CHECKING:
    from openchat.ratelimit_redis import RedisCounters

Kind = Literal["requests", "tokens", "concurrency"]
CONCURRENCY_RETRY_SECONDS = 1.0  # nobody knows when a running request ends; ask for a short wait


@dataclass(frozen=True)
class KeyLimits:
    rpm: int  # requests per window (a minute by default)
    tpm: int  # tokens per window: prompt plus completion
    max_concurrency: int  # requests in flight at once

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True)
class Window:
    """One sliding-window counter as `limits` reads it."""

    previous: int  # hits in the previous fixed window
    current: int  # hits in the current fixed window
    left: float  # seconds until the current fixed window ends
    length: float  # seconds in a fixed window

    @classmethod
    def observed(cls, previous: int, previous_ttl: float, current: int, current_ttl: float,
                 length: float) -> Window:
        """From `Storage.get_sliding_window`: the previous window's weight is previous_ttl /
        length, and the current window's key lives one window longer than the window does."""
        left = previous_ttl if previous else min(max(current_ttl - length, 0.0), length)
        return cls(previous, current, left, length)

    def count(self) -> float:
        return self.previous * self.left / self.length + self.current  # as `limits` counts

    def remaining(self, limit: int) -> int:
        return max(0, limit - floor(self.count()))

    def fits(self, limit: int, cost: int) -> bool:
        return floor(self.count()) + cost <= limit  # as `limits` admits

    def taken(self, amount: int) -> Window:
        return replace(self, current=self.current + amount)

    def seconds_until_fits(self, limit: int, cost: int) -> float:
        """Seconds until `cost` more fit under `limit` if nothing else is taken meanwhile."""
        if cost > limit:
            raise ValueError("a cost above the limit never fits")
        # fits() holds once count < limit - cost + 1.
        return self._seconds_until_below(limit - cost + 1)

    def seconds_until_reset(self) -> float:
        """Seconds until the whole limit is available again (OpenAI's "reset")."""
        return self._seconds_until_below(1)

    def _seconds_until_below(self, bound: float) -> float:
        if self.count() < bound:
            return 0.0
        # The count only falls, linearly: first the previous window's share drains until the
        # current window ends; then the current window becomes the previous one and drains
        # over a whole window.
        if self.current < bound:
            return self.left - (bound - self.current) * self.length / self.previous
        return self.left + self.length - bound * self.length / self.current


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go's time.Duration): "20ms", "1s", "59.6s", "6m0s", "1h0m0s"."""
    ms = round(seconds * 1000)
    if seconds > 0:
        ms = max(ms, 1)  # something pending never reads as "0s"
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, fraction = divmod(ms, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") + "s" if fraction else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def rate_headers(limits: KeyLimits, requests: Window, tokens: Window) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limits.rpm),
        "x-ratelimit-remaining-requests": str(requests.remaining(limits.rpm)),
        "x-ratelimit-reset-requests": format_duration(requests.seconds_until_reset()),
        "x-ratelimit-limit-tokens": str(limits.tpm),
        "x-ratelimit-remaining-tokens": str(tokens.remaining(limits.tpm)),
        "x-ratelimit-reset-tokens": format_duration(tokens.seconds_until_reset()),
    }


def retry_after_header(seconds: float) -> str:
    # Whole seconds, ignoring float noise below a millisecond; 0 would invite a retry now.
    return str(max(1, ceil(round(seconds, 3))))


class RateLimited(Exception):
    """A refused request. `retry_after` is None when waiting cannot help: the request alone
    needs more tokens than the key may use in a whole window; then there is no retry-after
    header either."""

    def __init__(self, kind: Kind, retry_after: float | None, headers: dict[str, str],
                 message: str):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.message = message
        self.headers = dict(headers)
        if retry_after is not None:
            self.headers["retry-after"] = retry_after_header(retry_after)


def refusal(limits: KeyLimits, reserve_tokens: int, in_flight: int, requests: Window,
            tokens: Window, *, per: str = "minute") -> RateLimited | None:
    """Why a request may not start now, or None if it may; checks only, takes nothing."""
    headers = rate_headers(limits, requests, tokens)
    if reserve_tokens > limits.tpm:
        return RateLimited("tokens", None, headers, (
            f"This request may use up to {reserve_tokens} tokens, more than this key's whole "
            f"limit of {limits.tpm} tokens per {per}, so it can never be served. Lower "
            "max_tokens or shorten the input."))
    if in_flight >= limits.max_concurrency:
        return RateLimited("concurrency", CONCURRENCY_RETRY_SECONDS, headers, (
            f"Too many concurrent requests for this key: at most {limits.max_concurrency} "
            "at once."))
    if not requests.fits(limits.rpm, 1):
        wait = requests.seconds_until_fits(limits.rpm, 1)
        return RateLimited("requests", wait, headers, (
            f"Rate limit reached for requests: {limits.rpm} per {per}. Try again in "
            f"{format_duration(wait)}."))
    if not tokens.fits(limits.tpm, reserve_tokens):
        wait = tokens.seconds_until_fits(limits.tpm, reserve_tokens)
        return RateLimited("tokens", wait, headers, (
            f"Rate limit reached for tokens: {limits.tpm} per {per}; this request may use up "
            f"to {reserve_tokens} and {tokens.remaining(limits.tpm)} remain. Try again in "
            f"{format_duration(wait)}."))
    return None


@dataclass
class Ticket:
    """An admitted request, to be settled exactly once when it ends."""

    key_id: str
    limits: KeyLimits
    reserved_tokens: int
    reserved_at: float | None  # a moment in the fixed window holding the reservation
    headers: dict[str, str]
    settled: bool = False
    slot: str = ""  # the request's slot in a shared store, freed on settle


def supports_refunds(storage_class: type) -> bool:
    """Refunds decrement the fixed window a reservation went into, so the storage must key
    windows by timestamp and have a public decr. In limits 5.8 only the memory storage does:
    redis rotates two keys by renaming them (so Redis has our own counters instead,
    ratelimit_redis.py), memcached keeps decr in a private bridge."""
    return issubclass(storage_class, TimestampedSlidingWindow) and hasattr(storage_class, "decr")


class RateLimiter:
    """Rate limits for many keys, kept in one `limits` storage (default: this process) or in
    a Redis shared by replicas."""

    def __init__(self, storage_uri: str = "memory://", *, window: int = 60):
        if window < 1:
            raise ValueError("window must be at least one second")
        self._window = window
        self._per = "minute" if window == 60 else format_duration(window)
        self._in_flight: dict[str, int] = {}  # this process's requests in flight, per key
        self._shared: RedisCounters | None = None
        if storage_uri.removeprefix("async+").startswith(("redis://", "rediss://")):
            from openchat.ratelimit_redis import RedisCounters  # redis only when configured

            self._shared = RedisCounters(storage_uri.removeprefix("async+"), window)
            return
        # `limits` reads "memory://" as its synchronous storage; the async one is "async+...".
        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        storage = storage_from_string(uri)
        if not supports_refunds(type(storage)):
            raise ConfigurationError(
                f"rate limits cannot use {storage_uri!r}: token refunds need a storage with "
                "timestamped sliding windows and decr (memory:// in limits 5.8), or redis://")
        self._storage = storage
        # Sliding window counter: takes cost=, is O(1) per key and smooths the edges a fixed
        # window allows (twice the limit around a boundary). Moving window would be exact but
        # keeps one entry per token (100k-entry lists per key) and has no way to give any
        # back; here a refund is a decrement of the one counter the reservation went into.
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        # `limits` has nothing for requests in flight: `_in_flight` is the count. One
        # admission per key at a time, so check-then-take cannot interleave in-process.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def admit(self, key_id: str, *, limits: KeyLimits, reserve_tokens: int) -> Ticket:
        """Take one request, `reserve_tokens` tokens and a slot, or raise `RateLimited`."""
        reserve_tokens = max(0, reserve_tokens)
        if self._shared:
            return await self._admit_shared(key_id, limits, reserve_tokens)
        requests_item, tokens_item = self._items(limits)
        async with self._locks[key_id]:
            requests = await self._read(requests_item, key_id)
            tokens = await self._read(tokens_item, key_id)
            refused = refusal(limits, reserve_tokens, self._in_flight.get(key_id, 0),
                              requests, tokens, per=self._per)
            if refused:
                raise refused
            reserved_at = await self._take(limits, key_id, reserve_tokens, requests, tokens)
            self._in_flight[key_id] = self._in_flight.get(key_id, 0) + 1
        headers = rate_headers(limits, requests.taken(1), tokens.taken(reserve_tokens))
        return Ticket(key_id, limits, reserve_tokens, reserved_at, headers)

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        """Free the slot and charge `used_tokens` instead of the reservation. Safe to call
        again: later calls do nothing."""
        if ticket.settled:
            return
        ticket.settled = True
        self._release(ticket.key_id)  # first, so a failing storage cannot leak the slot
        used_tokens = max(0, used_tokens)
        if self._shared:
            index = int(ticket.reserved_at // self._window)
            await self._shared.settle(ticket.key_id, ticket.slot,
                                      used_tokens - ticket.reserved_tokens, index)
        elif used_tokens != ticket.reserved_tokens:
            _, tokens_item = self._items(ticket.limits)
            await self._correct(tokens_item, ticket.key_id,
                                used_tokens - ticket.reserved_tokens, ticket.reserved_at)

    async def peek(self, key_id: str, limits: KeyLimits) -> dict[str, str]:
        """The key's headers as they stand, taking nothing."""
        if self._shared:
            seen = await self._shared.admit(key_id, rpm=limits.rpm, tpm=limits.tpm,
                                            reserve_tokens=0, max_concurrency=1, take=False)
            return rate_headers(limits, seen.requests, seen.tokens)
        requests_item, tokens_item = self._items(limits)
        return rate_headers(limits, await self._read(requests_item, key_id),
                            await self._read(tokens_item, key_id))

    def in_flight(self, key_id: str) -> int:
        """Requests in flight admitted by this limiter (with Redis: by this replica)."""
        return self._in_flight.get(key_id, 0)

    async def aclose(self) -> None:
        """Close the shared store's connections; nothing to do in memory."""
        if self._shared:
            await self._shared.aclose()

    async def _admit_shared(self, key_id: str, limits: KeyLimits,
                            reserve_tokens: int) -> Ticket:
        # One script checks and takes everything at once, so no lock is needed here.
        seen = await self._shared.admit(key_id, rpm=limits.rpm, tpm=limits.tpm,
                                        reserve_tokens=reserve_tokens,
                                        max_concurrency=limits.max_concurrency)
        if seen.refused:
            raise (refusal(limits, reserve_tokens, seen.in_flight, seen.requests, seen.tokens,
                           per=self._per)
                   or _contended(seen.refused, limits, seen.requests, seen.tokens))
        self._in_flight[key_id] = self._in_flight.get(key_id, 0) + 1
        headers = rate_headers(limits, seen.requests.taken(1), seen.tokens.taken(reserve_tokens))
        reserved_at = float(seen.window_index * self._window)  # the window's first moment
        return Ticket(key_id, limits, reserve_tokens, reserved_at, headers, slot=seen.ticket_id)

    def _items(self, limits: KeyLimits) -> tuple[RateLimitItem, RateLimitItem]:
        return (RateLimitItemPerSecond(limits.rpm, self._window, namespace="openchat/requests"),
                RateLimitItemPerSecond(limits.tpm, self._window, namespace="openchat/tokens"))

    async def _read(self, item: RateLimitItem, key_id: str) -> Window:
        state = await self._storage.get_sliding_window(item.key_for(key_id), self._window)
        return Window.observed(*state, length=self._window)

    async def _take(self, limits: KeyLimits, key_id: str, reserve_tokens: int,
                    requests: Window, tokens: Window) -> float | None:
        """Hit both windows; returns when the tokens were reserved (see `_hit`). A hit fails
        only if something else shares the storage (the lock rules it out in-process): then
        the request hit is undone and the request refused."""
        requests_item, tokens_item = self._items(limits)
        kind: Kind = "requests"
        taken, request_at = await self._hit(requests_item, key_id, 1)
        tokens_at = None
        if taken and reserve_tokens:
            kind = "tokens"
            taken, tokens_at = await self._hit(tokens_item, key_id, reserve_tokens)
            if not taken:
                await self._correct(requests_item, key_id, -1, request_at)
        if not taken:
            raise _contended(kind, limits, requests, tokens)
        return tokens_at

    async def _hit(self, item: RateLimitItem, key_id: str,
                   cost: int) -> tuple[bool, float | None]:
        """Whether the hit was taken, and a moment in the fixed window that took it: None if
        the hit straddled a window boundary, so we cannot tell which window did."""
        before = time.time()
        taken = await self._strategy.hit(item, key_id, cost=cost)
        after = time.time()
        return taken, (after if self._index(before) == self._index(after) else None)

    async def _correct(self, item: RateLimitItem, key_id: str, delta: int,
                       taken_at: float | None) -> None:
        """Add `delta` to what the key used; a refund goes back where the amount was taken."""
        key = item.key_for(key_id)
        now = time.time()
        storage = self._storage
        if delta > 0:
            # Spent is spent: charge it to the current window even past the limit, with the
            # expiry `limits` gives its own hits.
            _, current = storage.sliding_window_keys(key, self._window, now)
            await storage.incr(current, 2 * self._window, amount=delta)
        elif taken_at is not None and self._index(now) - self._index(taken_at) <= 1:
            # Older windows no longer count, so there is nothing left to refund from them.
            _, taken = storage.sliding_window_keys(key, self._window, taken_at)
            await storage.decr(taken, -delta)

    def _index(self, moment: float) -> int:
        return int(moment / self._window)  # the fixed window `limits` files a moment under

    def _release(self, key_id: str) -> None:
        left = self._in_flight.get(key_id, 0) - 1
        if left > 0:
            self._in_flight[key_id] = left
        else:
            self._in_flight.pop(key_id, None)


def _contended(kind: Kind, limits: KeyLimits, requests: Window, tokens: Window) -> RateLimited:
    """The store refused what the counts read just before seemed to allow (another writer,
    or rounding at the very edge): ask for a short wait."""
    return RateLimited(kind, 1.0, rate_headers(limits, requests, tokens),
                       f"Rate limit reached for {kind}. Try again in 1s.")
