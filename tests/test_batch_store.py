"""The Batch API's stores on SQLite and on a real PostgreSQL server: files owned by a
key, batches with their lines, claims that give each line to one runner, lapsed claims,
hand-back, cancellation and finalization."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from openchat.storage.batches import BatchLine, BatchStore, StoredBatch
from openchat.storage.files import FileStore, StoredFile
from tests.postgres import store_url

LEASE = timedelta(seconds=60)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    yield from store_url(request, tmp_path, "batches.db", "batch_lines, batches, files")


def lines(n: int, url: str = "/v1/chat/completions") -> list[tuple[int, str, str, str]]:
    return [(i + 1, f"req-{i}", url, json.dumps({"n": i})) for i in range(n)]


def make(store: BatchStore, n: int = 3, owner: str | None = "key1") -> StoredBatch:
    """A batch created and validated, its `n` lines pending."""
    batch = store.create(owner=owner, scopes=["batch", "inference"],
                         endpoint="/v1/chat/completions", input_file_id="file-1",
                         metadata={"job": "nightly"})
    assert store.start(batch.id, lines(n), model="openchat-3.5")
    return store.get(batch.id, None)


def test_files_round_trip_for_their_owner_only(url, tmp_path):
    files = FileStore(url, tmp_path / "files")
    saved = files.save(b'{"a": 1}\n', "in.jsonl", "batch", "key1")
    assert saved.id.startswith("file-")
    view = files.get(saved.id, "key1").as_object()
    assert view == {"id": saved.id, "object": "file", "bytes": 9,
                    "created_at": view["created_at"], "filename": "in.jsonl",
                    "purpose": "batch", "status": "processed", "expires_at": None,
                    "status_details": None}
    assert files.content(saved.id, "key1") == b'{"a": 1}\n'
    assert files.get(saved.id, "key2") is None and files.content(saved.id, "key2") is None
    assert files.delete(saved.id, "key2") is False
    assert files.delete(saved.id, "key1") is True
    assert files.get(saved.id, "key1") is None
    assert not (tmp_path / "files" / saved.id).exists()
    files.dispose()


def test_files_list_pages_newest_first(url, tmp_path):
    files = FileStore(url, tmp_path / "files")
    ids = [files.save(b"x", f"{n}.jsonl", "batch", "key1").id for n in range(3)]
    files.save(b"x", "other.jsonl", "batch", "key2")
    first = files.list("key1", limit=2)
    assert [f.id for f in first] == [ids[2], ids[1]]
    assert [f.id for f in files.list("key1", limit=2, after=ids[1])] == [ids[0]]
    assert [f.id for f in files.list("key1", limit=5, order="asc")] == ids
    assert files.list("key1", limit=5, purpose="batch_output") == []
    assert len(files.list(None, limit=10)) == 4  # authentication off: everyone's
    files.dispose()


def expire(files: FileStore, file_id: str) -> None:
    """Move a file's expiry into the past, as if its time had come."""
    with Session(files._engine) as session:
        row = session.get(StoredFile, file_id)
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        session.commit()


def test_the_purge_removes_partial_uploads_a_crash_left_only_once_stale(tmp_path):
    import os
    import time

    from openchat.storage.files import PARTIAL_MAX_AGE_S

    files = FileStore(f"sqlite:///{tmp_path}/files.db", tmp_path / "files")
    stale, fresh = tmp_path / "files" / "file-a.partial", tmp_path / "files" / "file-b.partial"
    stale.write_bytes(b"cut off")
    fresh.write_bytes(b"still arriving")
    old = time.time() - PARTIAL_MAX_AGE_S - 60
    os.utime(stale, (old, old))
    assert files.purge_expired() == 0  # counts files, not partial copies
    assert not stale.exists() and fresh.exists()
    files.dispose()


def test_an_expired_file_is_not_found_and_is_purged(url, tmp_path):
    files = FileStore(url, tmp_path / "files")
    kept = files.save(b"x", "kept.jsonl", "batch", "key1")
    expiring = files.save(b"y", "soon.jsonl", "batch", "key1", expires_after_s=3600)
    view = expiring.as_object()
    assert view["expires_at"] == view["created_at"] + 3600
    assert files.get(expiring.id, "key1") is not None
    expire(files, expiring.id)
    assert files.get(expiring.id, "key1") is None and files.content(expiring.id, None) is None
    assert [f.id for f in files.list("key1", limit=10)] == [kept.id]
    assert files.delete(expiring.id, "key1") is False
    assert (tmp_path / "files" / expiring.id).exists()  # until the purge
    assert files.purge_expired() == 1 and files.purge_expired() == 0
    assert not (tmp_path / "files" / expiring.id).exists()
    assert files.get(kept.id, "key1") is not None
    files.dispose()


def test_tables_of_an_earlier_version_get_the_new_columns(tmp_path):
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    with engine.begin() as connection:  # the files table before expires_at
        connection.execute(text("CREATE TABLE files (id VARCHAR(64) PRIMARY KEY, "
                                "owner VARCHAR(64), filename VARCHAR(512), "
                                "purpose VARCHAR(32), bytes INTEGER, created_at DATETIME)"))
    engine.dispose()
    files = FileStore(url, tmp_path / "files")
    saved = files.save(b"x", "a.jsonl", "batch", None, expires_after_s=3600)
    assert files.get(saved.id, None).expires_at is not None
    files.dispose()


def test_a_batch_is_created_with_its_lines_and_owned(url):
    store = BatchStore(url)
    batch = make(store)
    view = store.view(store.get(batch.id, "key1"))
    assert view["status"] == "in_progress" and view["object"] == "batch"
    assert view["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert view["metadata"] == {"job": "nightly"} and view["model"] == "openchat-3.5"
    assert view["usage"] is None  # until it ends
    assert view["expires_at"] - view["created_at"] == 24 * 3600
    assert store.get(batch.id, "key2") is None and store.cancel(batch.id, "key2") is None
    older = make(store)
    assert [b.id for b in store.list("key1", limit=10)] == [older.id, batch.id]
    assert [b.id for b in store.list("key1", limit=10, after=older.id)] == [batch.id]
    assert store.list("key2", limit=10) == []
    store.dispose()


def test_a_new_batch_validates_then_starts_once(url):
    store = BatchStore(url)
    batch = store.create(owner="key1", scopes=None, endpoint="/v1/chat/completions",
                         input_file_id="file-1", metadata=None, output_expires_s=7200)
    view = store.view(batch)
    assert view["status"] == "validating" and view["in_progress_at"] is None
    assert view["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert [b.id for b in store.to_validate()] == [batch.id]
    assert store.claim("w1", 10, LEASE) == []  # nothing runs before validation
    answered = {2: (413, {"custom_id": "req-1", "response": {"status_code": 413}})}
    assert store.start(batch.id, lines(3), model="m", answered=answered)
    assert not store.start(batch.id, lines(3))  # another runner's validation lost
    assert not store.fail(batch.id, {"object": "list", "data": []})
    started = store.get(batch.id, None)
    assert started.status == "in_progress" and started.model == "m"
    assert started.output_expires_s == 7200 and started.in_progress_at is not None
    assert store.to_validate() == []
    assert store.view(started)["request_counts"] == {"total": 3, "completed": 0, "failed": 1}
    assert [line.number for line in store.claim("w1", 10, LEASE)] == [1, 3]
    store.dispose()


def test_a_batch_whose_file_cannot_run_fails_with_errors(url):
    store = BatchStore(url)
    batch = store.create(owner=None, scopes=None, endpoint="/v1/completions",
                         input_file_id="file-1", metadata=None)
    errors = {"object": "list", "data": [{"code": "empty_file", "message": "no requests",
                                          "param": "file", "line": None}]}
    assert store.fail(batch.id, errors)
    view = store.view(store.get(batch.id, None))
    assert view["status"] == "failed" and view["failed_at"] is not None
    assert view["errors"] == errors
    assert not store.start(batch.id, lines(1, "/v1/completions"))
    store.dispose()


def test_a_batch_cancelled_while_validating_ends_cancelled(url):
    store = BatchStore(url)
    batch = store.create(owner="key1", scopes=None, endpoint="/v1/chat/completions",
                         input_file_id="file-1", metadata=None)
    assert store.cancel(batch.id, "key1").status == "cancelling"
    assert not store.start(batch.id, lines(2))
    assert [b.id for b in store.to_finalize("w1", LEASE)] == [batch.id]
    assert store.complete(batch.id, "w1", output_file_id=None, error_file_id=None)
    assert store.get(batch.id, None).status == "cancelled"
    store.dispose()


def test_lines_of_a_held_key_are_not_claimed(url):
    store = BatchStore(url)
    first, second, anonymous = make(store, 2, "key1"), make(store, 2, "key2"), make(store, 1, None)
    assert sorted(store.waiting_owners()) == ["key1", "key2"]
    claimed = store.claim("w1", 10, LEASE, held={"key1"})
    assert {line.batch_id for line in claimed} == {second.id, anonymous.id}
    assert store.waiting_owners() == ["key1"]
    assert {line.batch_id for line in store.claim("w1", 10, LEASE)} == {first.id}
    store.dispose()


def test_keys_take_turns_so_a_large_batch_does_not_hold_back_another_keys(url):
    store = BatchStore(url)
    large = make(store, 6, owner="key1")
    second = make(store, 2, owner="key1")
    small = make(store, 2, owner="key2")
    turns = [store.claim("w1", 1, LEASE)[0] for _ in range(4)]
    assert [(line.batch_id, line.number) for line in turns] == [
        (large.id, 1), (small.id, 1), (large.id, 2), (small.id, 2)]
    together = store.claim("w1", 3, LEASE)  # key2 has nothing left: key1's, oldest first
    assert [(line.batch_id, line.number) for line in together] == [
        (large.id, 3), (large.id, 4), (large.id, 5)]
    assert second.id not in {line.batch_id for line in together}
    store.dispose()


def test_each_line_is_claimed_once_then_finished_and_finalized(url, tmp_path):
    store = BatchStore(url)
    batch = make(store, 3)
    first = store.claim("w1", 2, LEASE)
    second = store.claim("w2", 5, LEASE)
    assert [line.number for line in first] == [1, 2]
    assert [line.number for line in second] == [3]
    assert store.claim("w3", 5, LEASE) == []
    assert store.to_finalize("w1", LEASE) == []  # lines are still running
    for line, status in zip(first + second, (200, 400, 200)):
        assert store.finish(line, "w2" if line.number == 3 else "w1", status,
                            {"custom_id": line.custom_id})
    assert store.view(store.get(batch.id, None))["request_counts"] == {
        "total": 3, "completed": 2, "failed": 1}
    won = store.to_finalize("w1", LEASE)
    assert [b.id for b in won] == [batch.id]
    assert store.to_finalize("w2", LEASE) == []  # one runner finalizes it
    assert store.get(batch.id, None).status == "finalizing"
    results = store.results(batch.id)
    assert [status for status, _ in results] == [200, 400, 200]
    assert json.loads(results[0][1]) == {"custom_id": "req-0"}
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    assert store.complete(batch.id, "w1", output_file_id="file-o", error_file_id="file-e",
                          usage=usage)
    assert store.complete(batch.id, "w2", output_file_id=None, error_file_id=None) is False
    view = store.view(store.get(batch.id, None))
    assert view["status"] == "completed" and view["completed_at"] is not None
    assert view["output_file_id"] == "file-o" and view["error_file_id"] == "file-e"
    assert view["usage"] == usage
    assert view["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    store.dispose()


def test_a_lapsed_claim_is_claimed_again_and_the_old_runner_cannot_finish(url):
    store = BatchStore(url)
    make(store, 1)
    (line,) = store.claim("dead", 1, LEASE)
    with Session(store._engine) as session:  # its runner stopped renewing long ago
        row = session.get(BatchLine, (line.batch_id, line.number))
        row.claimed_at = datetime.now(UTC) - 2 * LEASE
        session.add(row)
        session.commit()
    store.heartbeat("alive")  # renews only its own
    (again,) = store.claim("alive", 1, LEASE)
    assert again.number == line.number
    assert store.finish(line, "dead", 200, {}) is False
    assert store.finish(again, "alive", 200, {}) is True
    store.dispose()


def test_released_and_unclaimed_lines_run_again_finished_ones_never(url):
    store = BatchStore(url)
    make(store, 3)
    claimed = store.claim("w1", 3, LEASE)
    store.finish(claimed[0], "w1", 200, {})
    store.unclaim(claimed[1], "w1")
    store.release("w1")  # a clean stop: the rest goes back at once
    assert [line.number for line in store.claim("w2", 5, LEASE)] == [2, 3]
    store.dispose()


def test_cancel_drops_pending_lines_and_ends_cancelled(url):
    store = BatchStore(url)
    batch = make(store, 3)
    (running,) = store.claim("w1", 1, LEASE)
    cancelled = store.cancel(batch.id, "key1")
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    assert store.claim("w2", 5, LEASE) == []  # nothing more starts
    assert store.to_finalize("w1", LEASE) == []  # the running line finishes first
    store.finish(running, "w1", 200, {})
    assert [b.id for b in store.to_finalize("w1", LEASE)] == [batch.id]
    assert store.results(batch.id) == [(200, "{}"), (None, "req-1"), (None, "req-2")]
    store.complete(batch.id, "w1", output_file_id="file-o", error_file_id=None)
    view = store.view(store.get(batch.id, None))
    assert view["status"] == "cancelled" and view["cancelled_at"] is not None
    assert view["request_counts"] == {"total": 3, "completed": 1, "failed": 0}
    store.dispose()


def test_an_expired_batch_ends_expired_with_what_finished(url):
    store = BatchStore(url)
    batch = make(store, 2)
    (line,) = store.claim("w1", 1, LEASE)
    store.finish(line, "w1", 200, {})
    with Session(store._engine) as session:
        row = session.get(StoredBatch, batch.id)
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        session.commit()
    (won,) = store.to_finalize("w1", LEASE)
    assert won.id == batch.id and won.outcome == "expired"
    assert store.results(batch.id) == [(200, "{}"), (None, "req-1")]
    store.complete(batch.id, "w1", output_file_id="file-o", error_file_id=None)
    view = store.view(store.get(batch.id, None))
    assert view["status"] == "expired" and view["expired_at"] is not None
    assert view["request_counts"] == {"total": 2, "completed": 1, "failed": 0}
    store.dispose()
