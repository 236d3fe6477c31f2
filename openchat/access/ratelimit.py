"""Per-key rate limits: requests and tokens per minute, and requests in flight.

`RateLimiter.admit` checks a request against its key's `KeyLimits` and takes what it needs
(one request, the tokens it may use, a concurrency slot) or raises `RateLimited` having taken
nothing; `RateLimiter.settle` gives the slot back and corrects the token reservation to what
was really used. Headers carry OpenAI's names and formats, on success and on refusal.

What every store shares is defined in ratelimit_base.py and exported here. `open_rate_limiter`
picks the store by URI: memory:// keeps counts in this process (one budget per replica,
ratelimit_memory.py); redis:// and rediss:// keep them in one Redis shared by all replicas
(ratelimit_redis.py, same windows, headers and refusals). The stores import ratelimit_base,
never this module, so importing one here (only when asked for it) makes no cycle.
"""

from __future__ import annotations

from functools import lru_cache

from openchat.access.ratelimit_base import (
    CONCURRENCY_RETRY_SECONDS,
    KeyLimits,
    Kind,
    RateLimited,
    RateLimiter,
    RateLimiterBase,
    Ticket,
    Window,
    format_duration,
    rate_headers,
    refusal,
    retry_after_header,
)

__all__ = [
    "CONCURRENCY_RETRY_SECONDS",
    "KeyLimits",
    "Kind",
    "RateLimited",
    "RateLimiter",
    "RateLimiterBase",
    "Ticket",
    "Window",
    "format_duration",
    "rate_headers",
    "refusal",
    "retry_after_header",
    "open_rate_limiter",
    "shared_rate_limiter",
]


def open_rate_limiter(storage_uri: str = "memory://", *, window: int = 60) -> RateLimiter:
    """The limiter for `storage_uri`: redis:// or rediss:// (optionally async+) for one Redis
    shared by replicas, anything else a `limits` storage (memory:// for this process; others
    raise `limits.errors.ConfigurationError`, as they cannot refund)."""
    if storage_uri.removeprefix("async+").startswith(("redis://", "rediss://")):
        from openchat.access.ratelimit_redis import RedisRateLimiter  # redis only when configured

        return RedisRateLimiter(storage_uri, window=window)
    from openchat.access.ratelimit_memory import MemoryRateLimiter

    return MemoryRateLimiter(storage_uri, window=window)


@lru_cache(maxsize=4)
def shared_rate_limiter(storage_uri: str = "memory://", *, window: int = 60) -> RateLimiter:
    """This process's one limiter per store and window: the access middleware's, which the
    batch runner charges too (with memory://, a second limiter would be a second budget)."""
    return open_rate_limiter(storage_uri, window=window)
