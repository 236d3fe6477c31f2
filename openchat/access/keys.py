"""API keys: stored as SHA-256 hashes in their own SQL database, checked on every request.

A secret is shown once, when it is created (`openchat keys create`); the database keeps only
its hash, a short prefix people recognise it by, its scopes and its limits. The key database
is kept apart from the SQL tools' database: the model's read-only SQL must never see it.

A key found live is trusted for `auth.key_cache_s` (1 s) before it is read again: a client
sending many requests a second costs one lookup a second instead of one per request (a
thread hop and a SQL query, 0.4 ms of the worker's CPU alone and about 1 ms under load).
The worker that revokes a key forgets it at once (a lookup already under way may still
remember it, for that second at most); other workers and `openchat keys revoke` reach it
within that time. Unknown secrets are never remembered, so a new key works at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache

from cachetools import TTLCache
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, select

from openchat.access.scopes import ADMIN_SCOPE, ALL_SCOPES
from openchat.databases import UTCDateTime, create_tables, open_engine

logger = logging.getLogger("openchat.keys")

SCOPES = ALL_SCOPES
SECRET_PREFIX = "oc-"
PREFIX_LENGTH = 10  # "oc-" and 7 secret characters: enough to recognise, far too few to guess
MIN_ADMIN_SECRET_LENGTH = 24


class KeysModel(SQLModel, registry=registry()):
    """Base of the key tables: their own MetaData, so create_all never touches other tables."""


def _now() -> datetime:
    return datetime.now(UTC)


class APIKey(KeysModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32, description="Public; safe to log.")
    name: str = Field(max_length=200, description="A human label.")
    prefix: str = Field(max_length=PREFIX_LENGTH, description="The secret's first characters.")
    secret_hash: str = Field(index=True, unique=True, max_length=64, repr=False)
    scopes: str = Field(description="Space-separated scope names.")
    rpm: int | None = Field(None, description="Requests per minute; None: the default.")
    tpm: int | None = Field(None, description="Tokens per minute; None: the default.")
    max_concurrency: int | None = Field(None, description="Requests in flight; None: the "
                                        "default.")
    created_at: datetime = Field(default_factory=_now, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(None, sa_type=UTCDateTime)

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def hash_secret(secret: str) -> str:
    # Secrets are 32 random bytes, not passwords: nobody can brute-force 256 bits, so a
    # slow hash (bcrypt, argon2) would buy nothing and cost milliseconds on every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> str:
    """The scopes as stored: known names only, deduplicated, in SCOPES order."""
    wanted = {s.strip() for s in scopes if s.strip()}
    unknown = sorted(wanted.difference(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(SCOPES)}")
    if not wanted:
        raise ValueError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return " ".join(s for s in SCOPES if s in wanted)


def _check_limit(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1 (or left out for the default)")
    return value


class KeyStore:
    """The api_keys table behind one SQLAlchemy URL (SQLite file or PostgreSQL)."""

    def __init__(self, url: str, cache_s: float = 0.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = open_engine(url, "the key store")
        self.dialect = self._engine.dialect.name
        create_tables(self._engine, KeysModel.metadata)
        # Live keys by secret hash, for cache_s seconds (0: none). verify() runs in worker
        # threads and recent() on the event loop, hence the lock.
        self._live: TTLCache | None = (
            TTLCache(maxsize=4096, ttl=cache_s, timer=clock) if cache_s > 0 else None)
        self._live_lock = threading.Lock()

    def _session(self) -> Session:
        # expire_on_commit=False: the rows we return stay readable after the session closes.
        return Session(self._engine, expire_on_commit=False)

    def create(self, name: str, scopes: Iterable[str], *, rpm: int | None = None,
               tpm: int | None = None, max_concurrency: int | None = None,
               ) -> tuple[APIKey, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        return self._insert(name, scopes, secret, rpm, tpm, max_concurrency), secret

    def _insert(self, name: str, scopes: Iterable[str], secret: str, rpm: int | None,
                tpm: int | None, max_concurrency: int | None) -> APIKey:
        name = name.strip()
        if not name:
            raise ValueError("a key needs a name")
        key = APIKey(
            id="key_" + secrets.token_hex(6), name=name, prefix=secret[:PREFIX_LENGTH],
            secret_hash=hash_secret(secret), scopes=check_scopes(scopes),
            rpm=_check_limit("rpm", rpm), tpm=_check_limit("tpm", tpm),
            max_concurrency=_check_limit("max_concurrency", max_concurrency))
        with self._session() as session:
            session.add(key)
            session.commit()
        return key

    def recent(self, secret: str) -> APIKey | None:
        """The key with this secret if verify() found it live within cache_s, else None
        (then ask verify()). No I/O: safe on the event loop."""
        if self._live is None:
            return None
        with self._live_lock:
            return self._live.get(hash_secret(secret))

    def verify(self, secret: str) -> APIKey | None:
        """The live key with this secret, or None (unknown or revoked)."""
        digest = hash_secret(secret)
        key = self._by_hash(digest)
        # The lookup goes by hash, so its timing says nothing about the secret; the final
        # comparison is constant-time anyway.
        if key is None or not hmac.compare_digest(key.secret_hash, digest) or key.revoked:
            return None
        if self._live is not None:
            with self._live_lock:
                self._live[digest] = key
        return key

    def _by_hash(self, digest: str) -> APIKey | None:
        with self._session() as session:
            return session.exec(select(APIKey).where(APIKey.secret_hash == digest)).first()

    def list(self, include_revoked: bool = False) -> list[APIKey]:
        statement = select(APIKey).order_by(APIKey.created_at, APIKey.id)
        if not include_revoked:
            statement = statement.where(APIKey.revoked_at.is_(None))
        with self._session() as session:
            return list(session.exec(statement).all())

    def get(self, key_id: str) -> APIKey | None:
        with self._session() as session:
            return session.get(APIKey, key_id)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when there is no such live key."""
        with self._session() as session:
            key = session.get(APIKey, key_id)
            if key is None or key.revoked:
                return False
            key.revoked_at = _now()
            session.commit()
        self._forget(key.secret_hash)
        logger.info("revoked API key %s (%s)", key.id, key.name)
        return True

    def ensure_admin(self, secret: str, name: str = "bootstrap-admin", *,
                     rpm: int | None = None, tpm: int | None = None,
                     max_concurrency: int | None = None) -> APIKey:
        """Make sure `secret` (OPENCHAT_ADMIN_KEY) is a live admin key; safe at every start.
        The limits apply when the key is created here; an existing key keeps its own."""
        if len(secret) < MIN_ADMIN_SECRET_LENGTH:
            raise ValueError(f"the admin key must be at least {MIN_ADMIN_SECRET_LENGTH} "
                             "characters long")
        for _ in range(2):
            key = self._by_hash(hash_secret(secret))
            if key is not None:
                return self._grant_admin(key)
            try:
                key = self._insert(name, [ADMIN_SCOPE], secret, rpm, tpm, max_concurrency)
            except IntegrityError:
                continue  # another worker inserted it first: read theirs
            logger.info("created the bootstrap admin key %s", key.id)
            return key
        raise RuntimeError("could not create the bootstrap admin key")

    def _grant_admin(self, key: APIKey) -> APIKey:
        if key.revoked:
            # Revoking is final: a leaked key must not come back because the environment
            # still names it.
            raise ValueError(f"the admin key (OPENCHAT_ADMIN_KEY) is {key.id}, which was "
                             "revoked; set a new secret")
        if ADMIN_SCOPE in key.scope_set:
            return key
        with self._session() as session:
            key = session.get(APIKey, key.id)
            key.scopes = check_scopes([*key.scope_set, ADMIN_SCOPE])
            session.commit()
        self._forget(key.secret_hash)
        logger.warning("granted the admin scope to %s: it is OPENCHAT_ADMIN_KEY", key.id)
        return key

    def _forget(self, digest: str) -> None:
        if self._live is not None:
            with self._live_lock:
                self._live.pop(digest, None)

    def dispose(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"KeyStore({self.dialect})"


@lru_cache(maxsize=4)
def open_store(url: str, cache_s: float = 0.0) -> KeyStore:
    """The process's one KeyStore per URL, shared by the middleware and the admin routes
    (so a revocation through the admin API clears the middleware's cache too)."""
    return KeyStore(url, cache_s)
