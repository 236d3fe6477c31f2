"""Files for the Batch API: uploaded batch input files and the output and error files the
batch runner writes. Metadata in SQL (sqlmodel: SQLite, or PostgreSQL shared by replicas),
bytes in a directory (`batch.files_dir`, a shared volume for replicas), one file per id.
Uploads and downloads move in chunks (save_stream, open), never whole in memory; save
and content hold a whole file (the runner's outputs, tests).

A file belongs to the API key that uploaded it, or that owns the batch it came out of
(`owner`); every lookup filters on it, so another key's file is simply not found (404).
With authentication off the owner is None and every file is visible.

A file may expire (`expires_at`: an upload's `expires_after`, a batch's
`output_expires_after`): from then on it is not found, and `purge_expired` (the batch
runner calls it every round) deletes its row and bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy import or_
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, select

from openchat.databases import UTCDateTime, create_tables, open_engine

Purpose = Literal["batch", "batch_output"]
CHUNK_BYTES = 1024 * 1024  # what an upload or a download holds in memory at a time
PARTIAL_MAX_AGE_S = 6 * 3600  # an upload's partial copy untouched this long was cut off


class FileTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than {limit} bytes")
        self.limit = limit


class FilesModel(SQLModel, registry=registry()):
    """Base of the file table: its own MetaData, apart from keys, responses and batches."""


class StoredFile(FilesModel, table=True):
    __tablename__ = "files"

    id: str = Field(primary_key=True, max_length=64)
    owner: str | None = Field(None, index=True, max_length=64, description="The key's id.")
    filename: str = Field(max_length=512)
    purpose: str = Field(max_length=32)
    bytes: int
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)
    expires_at: datetime | None = Field(None, sa_type=UTCDateTime, index=True)

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    def as_object(self) -> dict[str, Any]:
        """OpenAI's FileObject."""
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": int(self.created_at.timestamp()), "filename": self.filename,
                "purpose": self.purpose, "status": "processed",
                "expires_at": None if self.expires_at is None
                else int(self.expires_at.timestamp()),
                "status_details": None}


def new_id(prefix: str) -> str:
    """`prefix` + a time-ordered hex id: later ids sort after earlier ones, so a list page
    can continue `after` an id with one comparison."""
    return f"{prefix}{time.time_ns():016x}{secrets.token_hex(6)}"


class FileStore:
    def __init__(self, url: str, directory: str | Path) -> None:
        self._engine = open_engine(url, "the file store")
        self.dialect = self._engine.dialect.name
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        create_tables(self._engine, FilesModel.metadata, {StoredFile.__table__: ["expires_at"]})

    def save(self, data: bytes, filename: str, purpose: Purpose,
             owner: str | None, expires_after_s: int | None = None) -> StoredFile:
        """A file made in memory (a batch's output); see save_stream."""
        return self.save_stream(io.BytesIO(data), filename, purpose, owner, expires_after_s)

    def save_stream(self, source: BinaryIO, filename: str, purpose: Purpose,
                    owner: str | None, expires_after_s: int | None = None, *,
                    max_bytes: int | None = None,
                    check: Callable[[BinaryIO], object] | None = None) -> StoredFile:
        """Copy `source` in chunks (memory stays at one chunk whatever its size) aside,
        `check` it there (read from the start; whatever it raises refuses the file), then
        rename it and add the row: a file listed is whole, and a refused one leaves nothing.
        FileTooLarge as soon as more than `max_bytes` came. `expires_after_s`: it expires
        that many seconds after its creation."""
        file_id = new_id("file-")
        path = self._path(file_id)
        partial = path.with_suffix(".partial")
        try:
            size = 0
            with partial.open("wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise FileTooLarge(max_bytes)
                    out.write(chunk)
            if check is not None:
                with partial.open("rb") as written:
                    check(written)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        now = datetime.now(UTC)
        row = StoredFile(id=file_id, owner=owner, filename=filename[:512], purpose=purpose,
                         bytes=size, created_at=now,
                         expires_at=None if expires_after_s is None
                         else now + timedelta(seconds=expires_after_s))
        try:
            with Session(self._engine, expire_on_commit=False) as session:
                session.add(row)
                session.commit()
        except BaseException:  # no row: its bytes would never be found nor purged
            path.unlink(missing_ok=True)
            raise
        return row

    def get(self, file_id: str, owner: str | None) -> StoredFile | None:
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(StoredFile, file_id)
        if row is None or (owner is not None and row.owner != owner) or row.expired():
            return None
        return row

    def content(self, file_id: str, owner: str | None) -> bytes | None:
        opened = self.open(file_id, owner)
        if opened is None:
            return None
        with opened[1] as handle:
            return handle.read()

    def open(self, file_id: str, owner: str | None) -> tuple[StoredFile, BinaryIO] | None:
        """The file's row and its bytes opened for reading (the caller closes them), or
        None. Once open, the bytes stay readable even if the file is deleted meanwhile."""
        row = self.get(file_id, owner)
        if row is None:
            return None
        try:
            return row, self._path(row.id).open("rb")
        except FileNotFoundError:  # deleted meanwhile
            return None

    def list(self, owner: str | None, *, limit: int, order: Literal["asc", "desc"] = "desc",
             after: str | None = None, purpose: str | None = None) -> list[StoredFile]:
        """Up to `limit` files in creation order; `after`: continue past that id."""
        now = datetime.now(UTC)
        query = select(StoredFile).where(or_(col(StoredFile.expires_at).is_(None),
                                             col(StoredFile.expires_at) > now))
        if owner is not None:
            query = query.where(StoredFile.owner == owner)
        if purpose is not None:
            query = query.where(StoredFile.purpose == purpose)
        if after is not None:
            query = query.where(col(StoredFile.id) < after if order == "desc"
                                else col(StoredFile.id) > after)
        ordering = col(StoredFile.id).desc() if order == "desc" else col(StoredFile.id)
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.exec(query.order_by(ordering).limit(limit)))

    def delete(self, file_id: str, owner: str | None) -> bool:
        row = self.get(file_id, owner)
        if row is None:
            return False
        self._remove(file_id)
        return True

    def purge_expired(self) -> int:
        """Delete the files that have expired, rows and bytes; how many there were. Also
        the partial copies of uploads that a crash cut off (older than PARTIAL_MAX_AGE_S:
        far longer than any upload runs)."""
        now = datetime.now(UTC)
        with Session(self._engine) as session:
            ids = list(session.exec(select(StoredFile.id).where(
                col(StoredFile.expires_at) <= now)).all())
        for file_id in ids:
            self._remove(file_id)
        stale = time.time() - PARTIAL_MAX_AGE_S
        for partial in self.directory.glob("*.partial"):
            with contextlib.suppress(FileNotFoundError):
                if partial.stat().st_mtime < stale:
                    partial.unlink()
        return len(ids)

    def _remove(self, file_id: str) -> None:
        """Row first, then bytes: a file that is listed always has its bytes."""
        with Session(self._engine) as session:
            found = session.get(StoredFile, file_id)
            if found is not None:
                session.delete(found)
                session.commit()
        self._path(file_id).unlink(missing_ok=True)

    def _path(self, file_id: str) -> Path:
        if not file_id.replace("-", "").isalnum():  # ids are ours; never a path
            raise ValueError(f"not a file id: {file_id!r}")
        return self.directory / file_id

    def dispose(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"FileStore({self.dialect}, {self.directory})"


@lru_cache(maxsize=4)
def open_file_store(url: str, directory: str) -> FileStore:
    """The process's one FileStore per URL and directory."""
    return FileStore(url, directory)
