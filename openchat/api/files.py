"""The Files API, for batches: upload a batch input file, list, retrieve, read, delete.

    POST   /v1/files                 multipart `file` + `purpose` (only "batch"), optional
                                     `expires_after[anchor]` + `expires_after[seconds]`
    GET    /v1/files                 the caller's files, paged as OpenAI pages lists
    GET    /v1/files/{id}            one file's FileObject
    GET    /v1/files/{id}/content    its bytes (input, output and error files alike)
    DELETE /v1/files/{id}            forget it

An upload is checked whole before it is kept: JSONL, every line a request with a unique
`custom_id`, method POST, a batch endpoint's url and an object body (400 naming the first
bad line), at most `batch.max_file_bytes` (413). Uploads and downloads move in chunks
between disk and the network, so neither is ever whole in memory. Every file belongs to
the calling key. A file given `expires_after` (1 hour to 30 days after its creation) is
not found once it has expired; the batch runner deletes it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

from fastapi import Depends, File, Form, Request, UploadFile
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from openchat.access.scopes import BATCH_SCOPE
from openchat.api.routing import Router, caller_key_id, error_responses
from openchat.config import BatchSettings
from openchat.protocol.batches import (
    MAX_EXPIRY_S,
    MIN_EXPIRY_S,
    ExpiresAfter,
    FileListQuery,
    read_batch_lines,
)
from openchat.protocol.errors import APIError, invalid_param
from openchat.storage.files import CHUNK_BYTES, FileStore, FileTooLarge, StoredFile

BATCH = frozenset({BATCH_SCOPE})


def add_file_routes(router: Router, files: Callable[[], FileStore],
                    settings: BatchSettings) -> None:
    @router.post("/v1/files", scopes=BATCH, max_body=settings.max_file_bytes + 64 * 1024)
    async def upload_file(request: Request, file: UploadFile = File(...),
                          purpose: str = Form(...),
                          anchor: str | None = Form(None, alias="expires_after[anchor]"),
                          seconds: str | None = Form(None, alias="expires_after[seconds]"),
                          ) -> dict:
        if purpose != "batch":
            raise invalid_param("purpose", f"purpose {purpose!r} is not supported here; "
                                "files are for batches: use 'batch'.")
        expiry = _expires_after(anchor, seconds)
        try:
            saved = await asyncio.to_thread(
                files().save_stream, file.file, file.filename or "batch.jsonl", "batch",
                caller_key_id(request), None if expiry is None else expiry.seconds,
                max_bytes=settings.max_file_bytes,
                check=lambda written: _check_upload(written, settings.max_lines))
        except FileTooLarge:
            raise APIError(f"The file is larger than {settings.max_file_bytes} bytes.",
                           status=413, param="file", code="file_too_large") from None
        return saved.as_object()

    @router.get("/v1/files", scopes=BATCH)
    async def list_files(request: Request, query: FileListQuery = Depends()) -> dict:
        found = await asyncio.to_thread(files().list, caller_key_id(request),
                                        limit=query.limit + 1, order=query.order,
                                        after=query.after, purpose=query.purpose)
        data = [row.as_object() for row in found[:query.limit]]
        return {"object": "list", "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(found) > query.limit}

    @router.get("/v1/files/{file_id}", scopes=BATCH, label="/v1/files/{id}")
    async def retrieve_file(file_id: str, request: Request) -> dict:
        return (await _stored(files(), file_id, caller_key_id(request))).as_object()

    content_path = "/v1/files/{file_id}/content"

    @router.get(content_path, scopes=BATCH, label="/v1/files/{id}/content",
                response_class=Response, responses={
                    **error_responses({"GET"}, content_path, BATCH),
                    200: {"description": "The file's bytes (JSONL for batch files).",
                          "content": {"application/octet-stream": {}}}})
    async def file_content(file_id: str, request: Request) -> Response:
        opened = await asyncio.to_thread(files().open, file_id, caller_key_id(request))
        if opened is None:
            raise _not_found(file_id)
        handle = opened[1]
        size = os.fstat(handle.fileno()).st_size
        return StreamingResponse(_chunks(handle), media_type="application/octet-stream",
                                 headers={"Content-Length": str(size)})

    @router.delete("/v1/files/{file_id}", scopes=BATCH, label="/v1/files/{id}")
    async def delete_file(file_id: str, request: Request) -> dict:
        if not await asyncio.to_thread(files().delete, file_id, caller_key_id(request)):
            raise _not_found(file_id)
        return {"id": file_id, "object": "file", "deleted": True}


def _expires_after(anchor: str | None, seconds: str | None) -> ExpiresAfter | None:
    """The upload's `expires_after[anchor]` and `expires_after[seconds]` form fields."""
    if anchor is None and seconds is None:
        return None
    try:  # form fields are text: seconds is read as a whole number first
        number = int(seconds) if seconds is not None and seconds.isdigit() else seconds
        return ExpiresAfter.model_validate({"anchor": anchor, "seconds": number})
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        raise invalid_param(f"expires_after[{field}]", "expires_after needs anchor "
                            f"'created_at' and seconds from {MIN_EXPIRY_S} to "
                            f"{MAX_EXPIRY_S} (1 hour to 30 days).") from None


def _check_upload(written: BinaryIO, max_lines: int) -> None:
    """The upload's lines, checked one at a time as its batch will read them."""
    for _ in read_batch_lines(written, max_lines):
        pass


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


async def _stored(files: FileStore, file_id: str, owner: str | None) -> StoredFile:
    found = await asyncio.to_thread(files.get, file_id, owner)
    if found is None:
        raise _not_found(file_id)
    return found


def _not_found(file_id: str) -> APIError:
    return APIError(f"No such File object: {file_id}", status=404, param="id",
                    code="not_found")
