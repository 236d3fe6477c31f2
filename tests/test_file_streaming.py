"""Batch files move in chunks: an upload is copied to the store and checked there a line at
a time (the same errors as a file checked whole), a refused or oversized one leaves
nothing behind, a file opened for reading survives its deletion, and an upload's memory
does not grow with the file."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest

from openchat.protocol.batches import parse_batch_file, read_batch_lines
from openchat.protocol.errors import APIError
from openchat.storage.files import CHUNK_BYTES, FileStore, FileTooLarge
from tests.test_batch_protocol import jsonl, request


@pytest.fixture
def files(tmp_path):
    store = FileStore(f"sqlite:///{tmp_path}/files.db", tmp_path / "files")
    yield store
    store.dispose()


def drain(written, max_lines: int = 100_000) -> None:
    """What POST /v1/files checks: every line of the copy, keeping none."""
    for _ in read_batch_lines(written, max_lines):
        pass


def upload(files: FileStore, data: bytes, max_lines: int = 100_000,
           max_bytes: int | None = None):
    return files.save_stream(io.BytesIO(data), "in.jsonl", "batch", "key1",
                             max_bytes=max_bytes,
                             check=lambda written: drain(written, max_lines))


def lines_of(size: int, text: str = "Hi", first: int = 0) -> bytes:
    """Valid requests, one per line, `size` bytes or a little more."""
    out, total, n = [], 0, first
    while total < size:
        out.append(json.dumps(request(f"r{n}", body={"messages": [text]}),
                              ensure_ascii=False).encode() + b"\n")
        total, n = total + len(out[-1]), n + 1
    return b"".join(out)


def leftovers(files: FileStore) -> list[str]:
    return sorted(path.name for path in files.directory.iterdir())


@pytest.mark.parametrize("content", [
    jsonl(request("a"), "{not json"),
    jsonl(request("a"), request("b"), request("a")),
    jsonl(request("a", "/v1/images/generations")),
    jsonl(request("a"), "", "[1]"),
    jsonl(request("a"), "\r\n{bad", request("b")),
    jsonl(request("a"), "x\r{bad"),
    b"", b"\n\n", b"\xff\xfe",
    jsonl(request("a"), "{not json") + b"\n\xff",  # not UTF-8 wins, as when decoded whole
    jsonl(*(request(str(n)) for n in range(4))),
])
def test_a_streamed_file_gets_the_same_error_as_a_whole_one(files, content):
    with pytest.raises(APIError) as whole:
        parse_batch_file(content, 3)
    with pytest.raises(APIError) as streamed:
        upload(files, content, max_lines=3)
    assert (streamed.value.code, streamed.value.message, streamed.value.param) == (
        whole.value.code, whole.value.message, whole.value.param)
    assert leftovers(files) == [] and files.list(None, limit=10) == []


def test_a_duplicate_far_into_a_large_file_names_its_line(files):
    data = lines_of(3 * CHUNK_BYTES)
    count = data.count(b"\n")
    with pytest.raises(APIError) as excinfo:
        upload(files, data + json.dumps(request("r7")).encode())
    assert excinfo.value.code == "duplicate_custom_id"
    assert excinfo.value.message.startswith(f"Line {count + 1}: ")
    assert leftovers(files) == []


def test_a_character_across_a_chunk_boundary_is_not_an_error(files):
    head = lines_of(CHUNK_BYTES - 4096)
    prefix, suffix = json.dumps(request("split", body={"text": "@"})).split("@")
    pad = CHUNK_BYTES - 1 - len(head) - len(prefix)  # "é" (two bytes) straddles 1 MiB
    data = (head + (prefix + "x" * pad + "é" + suffix + "\n").encode()
            + lines_of(CHUNK_BYTES, "漢字 é", first=10**6))
    assert data[CHUNK_BYTES - 1:CHUNK_BYTES + 1] == "é".encode()
    saved = upload(files, data)
    assert saved.bytes == len(data) and files.content(saved.id, "key1") == data
    assert leftovers(files) == [saved.id]


def test_an_oversized_upload_leaves_nothing(files):
    data = lines_of(2 * CHUNK_BYTES + 10)
    with pytest.raises(FileTooLarge):
        upload(files, data, max_bytes=2 * CHUNK_BYTES)
    assert leftovers(files) == [] and files.list(None, limit=10) == []
    assert upload(files, data, max_bytes=len(data)).bytes == len(data)  # at the limit: kept


def test_a_file_opened_for_reading_survives_its_deletion(files):
    data = lines_of(CHUNK_BYTES + 1)
    saved = upload(files, data)
    row, handle = files.open(saved.id, "key1")
    assert row.bytes == len(data) and files.open(saved.id, "key2") is None
    assert files.delete(saved.id, "key1")
    with handle:
        assert handle.read() == data
    assert files.open(saved.id, "key1") is None and leftovers(files) == []


def test_upload_memory_does_not_grow_with_the_file(files):
    """Copy and check of a 24 MiB upload peaks at a few MiB (the whole-file check it
    replaced held the bytes, their text and every parsed line: a multiple of the file)."""
    source = io.BytesIO(lines_of(24 * CHUNK_BYTES, "x" * 4000))  # 6,000 lines
    tracemalloc.start()
    try:
        files.save_stream(source, "in.jsonl", "batch", "key1", check=drain)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * CHUNK_BYTES, peak
