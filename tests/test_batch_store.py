"""The Batch API's stores on SQLite and on a real PostgreSQL server: files owned by a
key, batches with their lines, claims that give each line to one runner, lapsed claims,
hand-back, cancellation and finalization."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from openchat.storage.batches import BatchLine, BatchStore, StoredBatch
from openchat.storage.files import FileStore
from tests.postgres import store_url

LEASE = timedelta(seconds=60)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    yield from store_url(request, tmp_path, "batches.db", "batch_lines, batches, files")


def lines(n: int, url: str = "/v1/chat/completions") -> list[tuple[int, str, str, str]]:
    return [(i + 1, f"req-{i}", url, json.dumps({"n": i})) for i in range(n)]


def make(store: BatchStore, n: int = 3, owner: str | None = "key1") -> StoredBatch:
    return store.create(owner=owner, scopes=["batch", "inference"],
                        endpoint="/v1/chat/completions", input_file_id="file-1",
                        metadata={"job": "nightly"}, lines=lines(n), model="openchat-3.5")


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


def test_a_line_for_another_endpoint_fails_the_batch(url):
    store = BatchStore(url)
    batch = store.create(owner=None, scopes=None, endpoint="/v1/completions",
                         input_file_id="file-1", metadata=None, lines=lines(2))
    view = store.view(batch)
    assert view["status"] == "failed" and view["failed_at"] is not None
    assert [e["line"] for e in view["errors"]["data"]] == [1, 2]
    assert store.claim("w1", 10, LEASE) == []
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
