"""What both rate-limit stores share, and the interface they implement: the limits, the
window arithmetic, headers, refusals, tickets, `RateLimiter` and `RateLimiterBase` (the
in-process count of requests in flight, settling once).

Windows are `limits`' sliding window counter (why: see `MemoryRateLimiter` in
ratelimit_memory.py). Its count is the current fixed window's hits plus the previous
window's, weighted by the share of that window still inside the sliding one; `Window` does
that arithmetic for headers and retry delays, so it is testable without storage or event
loop. Import these from ratelimit.py; the stores import them from here, so that ratelimit.py
(which picks a store) and the stores do not import each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from math import ceil, floor
from typing import Literal

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
                 message: str) -> None:
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


class RateLimiter(ABC):
    """Rate limits for many keys, kept in one `limits` storage (default: this process) or in
    a Redis shared by replicas. Made by `open_rate_limiter`."""

    @abstractmethod
    async def admit(self, key_id: str, *, limits: KeyLimits, reserve_tokens: int) -> Ticket:
        """Take one request, `reserve_tokens` tokens and a slot, or raise `RateLimited`."""

    @abstractmethod
    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        """Free the slot and charge `used_tokens` instead of the reservation. Safe to call
        again: later calls do nothing."""

    @abstractmethod
    async def peek(self, key_id: str, limits: KeyLimits) -> dict[str, str]:
        """The key's headers as they stand, taking nothing."""

    @abstractmethod
    async def charge(self, key_id: str, limits: KeyLimits, tokens: int) -> None:
        """Add `tokens` used outside any request (a batch line's) to the key's token window,
        past its limit if need be: nothing is refused, no request or slot is taken."""

    @abstractmethod
    async def token_window(self, key_id: str, limits: KeyLimits) -> Window:
        """The key's token window as it stands, taking nothing."""

    @abstractmethod
    def in_flight(self, key_id: str) -> int:
        """Requests in flight admitted by this limiter (with Redis: by this replica)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the shared store's connections; nothing to do in memory."""


class RateLimiterBase(RateLimiter):
    """What both stores do alike: the window length and its wording, this process's count of
    requests in flight, and settling each ticket once. A store implements `_admit` (given a
    reservation of at least zero) and `_settle` (the slot is already released here)."""

    def __init__(self, *, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least one second")
        self._window = window
        self._per = "minute" if window == 60 else format_duration(window)
        self._in_flight: dict[str, int] = {}  # this process's requests in flight, per key

    async def admit(self, key_id: str, *, limits: KeyLimits, reserve_tokens: int) -> Ticket:
        return await self._admit(key_id, limits, max(0, reserve_tokens))

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        self._release(ticket.key_id)  # first, so a failing storage cannot leak the slot
        await self._settle(ticket, max(0, used_tokens))

    def in_flight(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)

    @abstractmethod
    async def _admit(self, key_id: str, limits: KeyLimits, reserve_tokens: int) -> Ticket:
        """`admit` with `reserve_tokens` already at least zero."""

    @abstractmethod
    async def _settle(self, ticket: Ticket, used_tokens: int) -> None:
        """`settle` for a ticket not settled before, its slot already released."""

    def _admitted(self, key_id: str) -> None:
        self._in_flight[key_id] = self._in_flight.get(key_id, 0) + 1

    def _release(self, key_id: str) -> None:
        left = self._in_flight.get(key_id, 0) - 1
        if left > 0:
            self._in_flight[key_id] = left
        else:
            self._in_flight.pop(key_id, None)

    @staticmethod
    def _contended(kind: Kind, limits: KeyLimits, requests: Window,
                   tokens: Window) -> RateLimited:
        """The store refused what the counts read just before seemed to allow (another writer,
        or rounding at the very edge): ask for a short wait."""
        return RateLimited(kind, 1.0, rate_headers(limits, requests, tokens),
                           f"Rate limit reached for {kind}. Try again in 1s.")
