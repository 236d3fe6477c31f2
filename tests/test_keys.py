"""API keys: hashed storage, verification, revocation, the bootstrap admin key and the
`openchat keys` CLI, on SQLite files and on a real PostgreSQL server."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from openchat.access.keys import PREFIX_LENGTH, SCOPES, APIKey, KeyStore, hash_secret
from openchat.access.scopes import ADMIN_SCOPE, INFERENCE_SCOPE, SQL_SCOPE
from tests.postgres import store_url

OPENCHAT = Path(sys.executable).parent / "openchat"


@pytest.fixture(params=["sqlite", "postgresql"])
def keys_url(request, tmp_path):
    yield from store_url(request, tmp_path, "keys.db", "api_keys")


@pytest.fixture
def store(keys_url):
    keys = KeyStore(keys_url)
    yield keys
    keys.dispose()


# Creating, verifying, revoking.

def test_create_then_verify_and_list(store):
    key, secret = store.create("ci bot", [INFERENCE_SCOPE, SQL_SCOPE], rpm=5, tpm=1000,
                               max_concurrency=2)
    assert secret.startswith("oc-") and len(secret) >= 40
    assert re.fullmatch(r"key_[0-9a-f]{12}", key.id)
    assert key.prefix == secret[:PREFIX_LENGTH]
    found = store.verify(secret)
    assert found is not None and found.id == key.id and found.name == "ci bot"
    assert found.scope_set == {INFERENCE_SCOPE, SQL_SCOPE}
    assert (found.rpm, found.tpm, found.max_concurrency) == (5, 1000, 2)
    assert found.created_at.tzinfo is not None and found.revoked_at is None
    assert found.created_at.utcoffset() == UTC.utcoffset(None)

    other, _ = store.create("defaults", ["inference"])
    assert (other.rpm, other.tpm, other.max_concurrency) == (None, None, None)
    assert [k.id for k in store.list()] == [key.id, other.id]
    assert store.get(key.id).name == "ci bot"
    assert store.get("key_000000000000") is None


def test_wrong_and_revoked_secrets_are_refused(store):
    key, secret = store.create("app", ["inference"])
    assert store.verify("oc-" + secrets.token_urlsafe(32)) is None
    assert store.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.verify("") is None

    assert store.revoke(key.id) is True
    assert store.verify(secret) is None
    assert store.revoke(key.id) is False  # already revoked
    assert store.revoke("key_unknown") is False
    assert store.list() == []
    [revoked] = store.list(include_revoked=True)
    assert revoked.id == key.id and revoked.revoked_at is not None
    assert store.get(key.id).revoked_at is not None


def test_scopes_and_limits_are_checked(store):
    with pytest.raises(ValueError, match="tools:everything"):
        store.create("x", ["inference", "tools:everything"])
    with pytest.raises(ValueError, match="at least one scope"):
        store.create("x", [])
    with pytest.raises(ValueError, match="rpm"):
        store.create("x", ["inference"], rpm=0)
    with pytest.raises(ValueError, match="name"):
        store.create("  ", ["inference"])
    assert store.list(include_revoked=True) == []

    key, _ = store.create("all", [ADMIN_SCOPE, *SCOPES, INFERENCE_SCOPE])
    assert key.scopes == " ".join(SCOPES)  # deduplicated, in SCOPES order


# The bootstrap admin key (OPENCHAT_ADMIN_KEY).

def test_ensure_admin_is_idempotent(store, keys_url):
    secret = secrets.token_urlsafe(24)
    first = store.ensure_admin(secret)
    second = store.ensure_admin(secret)
    assert first.id == second.id and first.name == "bootstrap-admin"
    assert len(store.list()) == 1
    assert ADMIN_SCOPE in store.verify(secret).scope_set

    # A store opened again (a restart) finds the same key.
    again = KeyStore(keys_url)
    try:
        assert again.ensure_admin(secret).id == first.id
    finally:
        again.dispose()


def test_the_bootstrap_admin_gets_its_limits_when_created_only(store):
    secret = secrets.token_urlsafe(24)
    created = store.ensure_admin(secret, rpm=6000, tpm=10_000_000, max_concurrency=256)
    assert (created.rpm, created.tpm, created.max_concurrency) == (6000, 10_000_000, 256)
    # Limits an admin set on it later stay: a restart does not reset them.
    again = store.ensure_admin(secret, rpm=1, tpm=1, max_concurrency=1)
    assert (again.rpm, again.max_concurrency) == (6000, 256)


def test_ensure_admin_grants_admin_to_an_existing_key(store):
    key, secret = store.create("ops", ["inference"])
    assert store.ensure_admin(secret).id == key.id
    assert store.verify(secret).scope_set == {INFERENCE_SCOPE, ADMIN_SCOPE}


def test_ensure_admin_refuses_revoked_and_short_secrets(store):
    secret = secrets.token_urlsafe(24)
    key = store.ensure_admin(secret)
    store.revoke(key.id)
    with pytest.raises(ValueError, match="revoked"):
        store.ensure_admin(secret)
    assert store.verify(secret) is None  # not resurrected
    with pytest.raises(ValueError, match="at least 24"):
        store.ensure_admin("too-short-secret")


# Many threads, as in the service.

def test_verify_from_many_threads(store):
    created = [store.create(f"k{i}", ["inference"]) for i in range(4)]
    revoked_key, revoked_secret = store.create("gone", ["inference"])
    store.revoke(revoked_key.id)

    def check(i: int) -> bool:
        key, secret = created[i % len(created)]
        return (store.verify(secret).id == key.id
                and store.verify(revoked_secret) is None
                and store.verify(secret + "x") is None)

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(check, range(200)))


def test_workers_starting_together_share_one_admin_key(keys_url):
    """Each service worker opens the store and ensures the admin key at the same moment."""
    secret = secrets.token_urlsafe(24)

    def start(_: int) -> str:
        store = KeyStore(keys_url)
        try:
            return store.ensure_admin(secret).id
        finally:
            store.dispose()

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(start, range(8)))
    assert len(ids) == 1
    # The race once left the table without its unique index (SQLite created the table and
    # the index in two statements, and a worker inserted between them).
    engine = create_engine(KeyStore(keys_url)._engine.url)
    try:
        unique = [i["column_names"] for i in inspect(engine).get_indexes("api_keys")
                  if i["unique"]]
    finally:
        engine.dispose()
    assert ["secret_hash"] in unique


# Nothing secret leaks.

def test_secret_is_not_stored_in_clear(tmp_path):
    store = KeyStore(f"sqlite:///{tmp_path}/keys.db")
    made = [store.create(f"k{i}", ["inference"]) for i in range(3)]
    made.append((store.ensure_admin(admin := secrets.token_urlsafe(30)), admin))
    store.dispose()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # journal files too
    for key, secret in made:
        assert hash_secret(secret).encode() in raw  # the right file was read
        assert secret.encode() not in raw
        assert secret[PREFIX_LENGTH:].encode() not in raw


def test_repr_shows_neither_secret_nor_hash(tmp_path):
    store = KeyStore(f"sqlite:///{tmp_path}/keys.db")
    key, secret = store.create("app", ["inference"])
    for text_ in (repr(key), str(key), repr(store.verify(secret)), repr(store.list())):
        assert secret not in text_ and key.secret_hash not in text_
    assert str(tmp_path) not in repr(store)
    store.dispose()


def test_keys_live_in_their_own_metadata(tmp_path):
    assert "api_keys" not in SQLModel.metadata.tables
    assert APIKey.metadata is not SQLModel.metadata
    KeyStore(f"sqlite:///{tmp_path}/keys.db").dispose()
    engine = create_engine(f"sqlite:///{tmp_path}/keys.db")
    assert inspect(engine).get_table_names() == ["api_keys"]
    engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql://u@h/db"])
def test_unsupported_urls_are_refused(url):
    with pytest.raises(ValueError):
        KeyStore(url)


# The `openchat keys` command line.

def _openchat(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENCHAT_AUTH__KEYS_URL": f"sqlite:///{tmp_path}/keys.db",
           "OPENCHAT_AUTH__DEFAULT_TPM": "777"}
    return subprocess.run([str(OPENCHAT), "keys", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)


def test_cli_create_list_revoke(tmp_path):
    created = _openchat(tmp_path, "create", "ci-bot", "--scopes", "inference,tools:sql",
                        "--rpm", "5", "--concurrency", "3")
    assert created.returncode == 0, created.stderr
    secret = re.search(r"^secret: (oc-\S+)$", created.stdout, re.M).group(1)
    key_id = re.search(r"^id:\s+(key_\w+)$", created.stdout, re.M).group(1)
    assert "will not be shown again" in created.stdout
    assert "inference tools:sql" in created.stdout
    assert "rpm=5 " in created.stdout and "tpm=777*" in created.stdout  # env default
    assert "concurrency=3 " in created.stdout

    store = KeyStore(f"sqlite:///{tmp_path}/keys.db")
    assert store.verify(secret).id == key_id
    digest = store.get(key_id).secret_hash
    store.dispose()

    listed = _openchat(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and "ci-bot" in listed.stdout
    assert secret[:PREFIX_LENGTH] in listed.stdout
    assert secret not in listed.stdout and digest not in listed.stdout
    assert secret[PREFIX_LENGTH:] not in listed.stdout

    revoked = _openchat(tmp_path, "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    again = _openchat(tmp_path, "revoke", key_id)
    assert again.returncode == 1 and "already revoked" in again.stderr
    unknown = _openchat(tmp_path, "revoke", "key_nothere")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr

    assert key_id not in _openchat(tmp_path, "list").stdout
    everything = _openchat(tmp_path, "list", "--all").stdout
    assert key_id in everything and secret not in everything


def test_cli_refuses_unknown_scope(tmp_path):
    result = _openchat(tmp_path, "create", "x", "--scopes", "inference,root")
    assert result.returncode == 1
    assert "'root'" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def make_store(keys_url):
    stores = []

    def make(**kwargs) -> KeyStore:
        stores.append(KeyStore(keys_url, **kwargs))
        return stores[-1]
    yield make
    for store in stores:
        store.dispose()


class Clock:
    """A hand-moved time.monotonic for the key cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_verified_key_is_remembered_for_key_cache_s_and_forgotten_when_revoked(make_store):
    clock = Clock()
    store = make_store(cache_s=1.0, clock=clock)
    key, secret = store.create("app", ["inference"])
    assert store.recent(secret) is None  # not verified yet: ask the database
    assert store.verify(secret).id == key.id
    assert store.recent(secret).id == key.id
    clock.now += 1.01
    assert store.recent(secret) is None  # stale: read it again

    assert store.verify(secret).id == key.id
    store.revoke(key.id)  # this worker forgets it at once
    assert store.recent(secret) is None
    assert store.verify(secret) is None


def test_another_workers_revocation_reaches_the_cache_within_key_cache_s(make_store):
    clock = Clock()
    worker = make_store(cache_s=1.0, clock=clock)
    other = make_store()  # another worker, or `openchat keys revoke`
    key, secret = worker.create("app", ["inference"])
    worker.verify(secret)
    assert other.revoke(key.id)
    clock.now += 0.5
    assert worker.recent(secret).id == key.id  # still trusted, at most key_cache_s
    clock.now += 0.51
    assert worker.recent(secret) is None
    assert worker.verify(secret) is None  # and the database says revoked


def test_unknown_secrets_are_not_remembered_and_zero_turns_the_cache_off(make_store):
    store = make_store(cache_s=1.0)
    unknown = "oc-" + secrets.token_urlsafe(32)
    assert store.verify(unknown) is None
    assert store.recent(unknown) is None
    key, secret = store.create("app", ["inference"])  # created after a miss: works at once
    assert store.verify(secret).id == key.id

    uncached = make_store(cache_s=0)
    assert uncached.verify(secret).id == key.id
    assert uncached.recent(secret) is None
