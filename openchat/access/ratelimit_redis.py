"""Rate-limit counters in Redis, so every replica behind a load balancer draws on one budget.

Written on redis-py rather than `limits`: its Redis sliding window keeps two keys per item
and rotates them by renaming, so a window has no name a refund could find later, it has no
decr, and it checks one item per call (requests and tokens could not be taken together).
Here each fixed window is its own counter, named by its index (server time // window), and
counts are combined as the memory path does (`Window`): previous * share left + current.

Each call is one Lua script, which Redis runs alone: admission reads both windows and the
requests in flight and takes a request, the tokens and a slot only if all fit, so no two
replicas can both take the last unit and a refusal takes nothing. Time is the Redis
server's clock, the one clock every replica shares.

Requests in flight are a sorted set per key: ticket id -> when the slot lapses. A replica
that dies mid-request cannot settle, so each slot lapses SLOT_LIFETIME_SECONDS after its
admission whatever happens. The tradeoff: a request running longer than that loses its slot
early, and until it ends the key may run more at once than its limit.

`RedisRateLimiter` is the `RateLimiter` on these counters (`RedisCounters`, one Redis for
many keys): the scripts decide, and refusals and headers are built as in memory.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis.asyncio as redis

from openchat.access.ratelimit_base import (
    KeyLimits,
    RateLimiterBase,
    Ticket,
    Window,
    rate_headers,
    refusal,
)

logger = logging.getLogger(__name__)
SLOT_LIFETIME_SECONDS = 600  # well above a long streamed answer, short enough to heal a leak

# KEYS: the key's request and token counters (prefixes: + window index) and its slots.
# ARGV: window ms, rpm, tpm, tokens to reserve, max in flight, slot lifetime ms, ticket id
# ("" only looks). Returns why it refused ("" if it did not) and what it saw before taking.
_ADMIT = """
local window = tonumber(ARGV[1])
local rpm, tpm, reserve = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local slots, lifetime, ticket = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local index = math.floor(now / window)
local left = (index + 1) * window - now
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local busy = redis.call('ZCARD', KEYS[3])
local function counts(prefix)
  return tonumber(redis.call('GET', prefix .. (index - 1)) or 0),
         tonumber(redis.call('GET', prefix .. index) or 0)
end
local function fits(previous, current, limit, cost)
  return math.floor(previous * left / window + current) + cost <= limit
end
local function take(prefix, amount)
  if amount > 0 then
    redis.call('INCRBY', prefix .. index, amount)
    redis.call('PEXPIREAT', prefix .. index, (index + 2) * window)
  end
end
local rp, rc = counts(KEYS[1])
local tp, tc = counts(KEYS[2])
local refused = ''
if reserve > tpm then refused = 'tokens'
elseif busy >= slots then refused = 'concurrency'
elseif not fits(rp, rc, rpm, 1) then refused = 'requests'
elseif not fits(tp, tc, tpm, reserve) then refused = 'tokens' end
if ticket ~= '' and refused == '' then
  take(KEYS[1], 1)
  take(KEYS[2], reserve)
  redis.call('ZADD', KEYS[3], now + lifetime, ticket)
  redis.call('PEXPIRE', KEYS[3], lifetime)
end
return {refused, rp, rc, tp, tc, busy, now, index}
"""

# KEYS: the key's token counter prefix and its slots. ARGV: window ms, ticket id, tokens used
# minus reserved, the reservation's window index. A window counts until the next one ends
# (its expiry), so a refund to an older one would credit tokens no longer counted: skipped.
_SETTLE = """
local window, delta, reserved = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[2])
if delta == 0 then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local index = math.floor(now / window)
if delta > 0 then
  redis.call('INCRBY', KEYS[1] .. index, delta)
  redis.call('PEXPIREAT', KEYS[1] .. index, (index + 2) * window)
elseif reserved >= index - 1 then
  local have = tonumber(redis.call('GET', KEYS[1] .. reserved) or 0)
  if have > 0 then redis.call('DECRBY', KEYS[1] .. reserved, math.min(-delta, have)) end
end
return 0
"""


@dataclass(frozen=True)
class Seen:
    """One admission script's answer: the key's state before anything was taken."""

    refused: str  # "" when admitted, else the kind the script refused for
    requests: Window
    tokens: Window
    in_flight: int
    window_index: int  # the fixed window any reservation went into
    ticket_id: str


class RedisCounters:
    """Request and token windows and slots of many keys, in one Redis."""

    def __init__(self, uri: str, window: int) -> None:
        self._client = redis.from_url(uri)  # connects lazily, in the loop that first uses it
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._window = window

    async def admit(self, key_id: str, *, rpm: int, tpm: int, reserve_tokens: int,
                    max_concurrency: int, take: bool = True) -> Seen:
        """Take one request, the tokens and a slot if all fit; with take=False only look."""
        ticket_id = uuid.uuid4().hex if take else ""
        answer = await self._admit(self._keys(key_id), [
            self._window * 1000, rpm, tpm, reserve_tokens, max_concurrency,
            SLOT_LIFETIME_SECONDS * 1000, ticket_id])
        refused, rp, rc, tp, tc, busy, now_ms, index = answer
        left = ((index + 1) * self._window * 1000 - now_ms) / 1000
        return Seen(refused.decode(), Window(rp, rc, left, self._window),
                    Window(tp, tc, left, self._window), busy, index, ticket_id)

    async def settle(self, key_id: str, ticket_id: str, delta: int, window_index: int) -> None:
        """Free the slot; add `delta` tokens (a refund goes back where they were taken).
        Never raises for Redis: it runs as a request ends, and what it would have freed errs
        on the safe side (the slot lapses, the reservation stays charged)."""
        _, tokens, slots = self._keys(key_id)
        try:
            await self._settle([tokens, slots],
                               [self._window * 1000, ticket_id, delta, window_index])
        except redis.RedisError as exc:
            logger.warning("rate limits: could not settle key %s in Redis: %s", key_id, exc)

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _keys(key_id: str) -> list[str]:
        # One hash tag per key: a script's keys must share a cluster slot.
        base = f"openchat:ratelimit:{{{key_id}}}"
        return [f"{base}:requests:", f"{base}:tokens:", f"{base}:in-flight"]


class RedisRateLimiter(RateLimiterBase):
    """Rate limits for many keys, kept in a Redis shared by replicas."""

    def __init__(self, storage_uri: str, *, window: int = 60) -> None:
        super().__init__(window=window)
        self._counters = RedisCounters(storage_uri.removeprefix("async+"), window)

    async def _admit(self, key_id: str, limits: KeyLimits, reserve_tokens: int) -> Ticket:
        # One script checks and takes everything at once, so no lock is needed here.
        seen = await self._counters.admit(key_id, rpm=limits.rpm, tpm=limits.tpm,
                                          reserve_tokens=reserve_tokens,
                                          max_concurrency=limits.max_concurrency)
        if seen.refused:
            raise (refusal(limits, reserve_tokens, seen.in_flight, seen.requests, seen.tokens,
                           per=self._per)
                   or self._contended(seen.refused, limits, seen.requests, seen.tokens))
        self._admitted(key_id)
        headers = rate_headers(limits, seen.requests.taken(1), seen.tokens.taken(reserve_tokens))
        reserved_at = float(seen.window_index * self._window)  # the window's first moment
        return Ticket(key_id, limits, reserve_tokens, reserved_at, headers, slot=seen.ticket_id)

    async def _settle(self, ticket: Ticket, used_tokens: int) -> None:
        index = int(ticket.reserved_at // self._window)
        await self._counters.settle(ticket.key_id, ticket.slot,
                                    used_tokens - ticket.reserved_tokens, index)

    async def peek(self, key_id: str, limits: KeyLimits) -> dict[str, str]:
        seen = await self._counters.admit(key_id, rpm=limits.rpm, tpm=limits.tpm,
                                          reserve_tokens=0, max_concurrency=1, take=False)
        return rate_headers(limits, seen.requests, seen.tokens)

    async def charge(self, key_id: str, limits: KeyLimits, tokens: int) -> None:
        if tokens > 0:  # the settle script with no slot to free: it adds to the current window
            await self._counters.settle(key_id, "", tokens, 0)

    async def token_window(self, key_id: str, limits: KeyLimits) -> Window:
        seen = await self._counters.admit(key_id, rpm=limits.rpm, tpm=limits.tpm,
                                          reserve_tokens=0, max_concurrency=1, take=False)
        return seen.tokens

    async def aclose(self) -> None:
        """Close the shared store's connections."""
        await self._counters.aclose()
