"""Batch lines against their key's token budget: the tokens a finished line used are
charged to the key's tokens-per-window limit, as a live call's are, and a key whose token
window is exhausted gets no new line claimed until the window has room again.

The rule is deliberately simple: charge after the fact (a line's usage is only known when
it ends), hold before claiming. A batch therefore never takes more than the key's budget
plus what its lines already running use; it never refuses a line (lines wait, they do not
fail), and it counts no requests against `rpm` (a batch is one request, its lines are not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from openchat.access.keys import APIKey
from openchat.access.ratelimit_base import KeyLimits, RateLimiter
from openchat.config import AuthSettings


def key_limits(key: APIKey, auth: AuthSettings) -> KeyLimits:
    """A key's own limits, the configured defaults where it sets none."""
    return KeyLimits(rpm=key.rpm or auth.default_rpm, tpm=key.tpm or auth.default_tpm,
                     max_concurrency=key.max_concurrency or auth.default_max_concurrency)


class TokenBudget:
    """The token budgets of the keys that own batches, in `limiter()` (the access
    middleware's, `shared_rate_limiter`). `find_key(key_id)` looks a key up (blocking: it
    runs in a thread); a key that is gone or revoked has no budget to hold."""

    def __init__(self, limiter: Callable[[], RateLimiter],
                 find_key: Callable[[str], APIKey | None],
                 auth: AuthSettings) -> None:
        self._limiter, self._find_key, self._auth = limiter, find_key, auth

    async def _limits(self, key_id: str) -> KeyLimits | None:
        key = await asyncio.to_thread(self._find_key, key_id)
        return None if key is None or key.revoked else key_limits(key, self._auth)

    async def charge(self, key_id: str | None, tokens: int) -> None:
        """Charge a finished line's tokens to its key (None: authentication is off)."""
        if key_id is None or tokens <= 0:
            return
        limits = await self._limits(key_id)
        if limits is not None:
            await self._limiter().charge(key_id, limits, tokens)

    async def wait_s(self, key_id: str | None) -> float:
        """Seconds until the key's token window has room for another token: 0 if it has
        now, so its lines may be claimed."""
        if key_id is None:
            return 0.0
        limits = await self._limits(key_id)
        if limits is None:
            return 0.0
        window = await self._limiter().token_window(key_id, limits)
        return 0.0 if window.fits(limits.tpm, 1) else window.seconds_until_fits(limits.tpm, 1)
