"""Rate limits in a `limits` storage: memory:// keeps the counts in this process, so each
replica enforces the whole budget on its own (one budget for all replicas: ratelimit_redis.py).

`MemoryRateLimiter` hits `limits`' sliding window counter (why that strategy: see its
`__init__`) and reads the windows back as `Window`s for headers and refusals. A refund
decrements the fixed window the reservation went into, which only storages keyed by
timestamp with a public decr allow (`supports_refunds`). Requests in flight are counted in
this process, with one admission per key at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.storage.base import TimestampedSlidingWindow

from openchat.access.ratelimit_base import (
    KeyLimits,
    Kind,
    RateLimiterBase,
    Ticket,
    Window,
    rate_headers,
    refusal,
)


def supports_refunds(storage_class: type) -> bool:
    """Refunds decrement the fixed window a reservation went into, so the storage must key
    windows by timestamp and have a public decr. In limits 5.8 only the memory storage does:
    redis rotates two keys by renaming them (so Redis has our own counters instead,
    ratelimit_redis.py), memcached keeps decr in a private bridge."""
    return issubclass(storage_class, TimestampedSlidingWindow) and hasattr(storage_class, "decr")


class MemoryRateLimiter(RateLimiterBase):
    """Rate limits for many keys, kept in one `limits` storage (default: this process)."""

    def __init__(self, storage_uri: str = "memory://", *, window: int = 60) -> None:
        super().__init__(window=window)
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

    async def _admit(self, key_id: str, limits: KeyLimits, reserve_tokens: int) -> Ticket:
        requests_item, tokens_item = self._items(limits)
        async with self._locks[key_id]:
            requests = await self._read(requests_item, key_id)
            tokens = await self._read(tokens_item, key_id)
            refused = refusal(limits, reserve_tokens, self._in_flight.get(key_id, 0),
                              requests, tokens, per=self._per)
            if refused:
                raise refused
            reserved_at = await self._take(limits, key_id, reserve_tokens, requests, tokens)
            self._admitted(key_id)
        headers = rate_headers(limits, requests.taken(1), tokens.taken(reserve_tokens))
        return Ticket(key_id, limits, reserve_tokens, reserved_at, headers)

    async def _settle(self, ticket: Ticket, used_tokens: int) -> None:
        if used_tokens != ticket.reserved_tokens:
            _, tokens_item = self._items(ticket.limits)
            await self._correct(tokens_item, ticket.key_id,
                                used_tokens - ticket.reserved_tokens, ticket.reserved_at)

    async def peek(self, key_id: str, limits: KeyLimits) -> dict[str, str]:
        requests_item, tokens_item = self._items(limits)
        return rate_headers(limits, await self._read(requests_item, key_id),
                            await self._read(tokens_item, key_id))

    async def charge(self, key_id: str, limits: KeyLimits, tokens: int) -> None:
        if tokens > 0:
            _, tokens_item = self._items(limits)
            await self._correct(tokens_item, key_id, tokens, None)

    async def token_window(self, key_id: str, limits: KeyLimits) -> Window:
        _, tokens_item = self._items(limits)
        return await self._read(tokens_item, key_id)

    async def aclose(self) -> None:
        """Nothing to close in memory."""

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
            raise self._contended(kind, limits, requests, tokens)
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
