"""HTTP routes for the document store: collections, documents, search (an extension).

    GET    /v1/collections                               collection names
    GET    /v1/collections/{collection}/documents        documents and their chunk counts
    POST   /v1/collections/{collection}/documents        add or replace one document (text,
                                                         markdown, html, or a PDF in base64)
    DELETE /v1/collections/{collection}/documents/{id}   remove one document
    POST   /v1/collections/{collection}/search           the chunks nearest a query

Chroma's client is synchronous, so every call runs in a worker thread; its ValueErrors
(bad collection name, empty text, unknown collection) are the client's 400s and 404s.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Literal

from pydantic import Field, model_validator
from starlette.responses import JSONResponse

from openchat.access.scopes import DOCUMENTS_SCOPE, DOCUMENTS_WRITE_SCOPE
from openchat.api.routing import Router
from openchat.generation.retrieval import check_top_k
from openchat.protocol.errors import APIError
from openchat.protocol.requests import StrictModel
from tools.documents import DocumentStore
from tools.readers import read_pdf_bytes

MAX_DOCUMENT_CHARS = 2_000_000


class DocumentIn(StrictModel):
    source: str = Field(min_length=1, max_length=1024, description="A stable name for the "
                        "document (file name, URL); re-sending it replaces the document.")
    text: str | None = Field(None, min_length=1, max_length=MAX_DOCUMENT_CHARS)
    content_base64: str | None = Field(None, min_length=1, description="The file's bytes, "
                                       "for format pdf.")
    format: Literal["text", "markdown", "html", "pdf"] = "text"

    @model_validator(mode="after")
    def _one_content(self):
        if self.format == "pdf" and (self.content_base64 is None or self.text is not None):
            raise ValueError("a pdf document comes as content_base64 (and no text)")
        if self.format != "pdf" and (self.text is None or self.content_base64 is not None):
            raise ValueError("a text, markdown or html document comes as text")
        return self

    def plain_text(self) -> tuple[str, str]:
        """(text, format) for the store; a PDF is read here."""
        if self.format != "pdf":
            return self.text, self.format
        try:
            data = base64.b64decode(self.content_base64, validate=True)
        except ValueError:
            raise APIError("content_base64 is not valid base64.",
                           param="content_base64") from None
        return read_pdf_bytes(data, self.source), "text"


class SearchIn(StrictModel):
    query: str = Field(min_length=1, max_length=8192)
    top_k: int = Field(5, ge=1)


async def _call(function: Callable, *args) -> Any:
    try:
        return await asyncio.to_thread(function, *args)
    except LookupError as exc:
        raise APIError(str(exc), status=404, code="not_found") from None
    except ValueError as exc:
        raise APIError(str(exc), code="invalid_value") from None


READ = frozenset({DOCUMENTS_SCOPE})
WRITE = frozenset({DOCUMENTS_WRITE_SCOPE})


def add_document_routes(router: Router, store: Callable[[], DocumentStore]) -> None:
    """`store()` returns the DocumentStore (503 when none is configured)."""

    @router.get("/v1/collections", scopes=READ)
    async def list_collections() -> dict:
        names = await _call(store().collections)
        return {"object": "list", "data": [{"object": "collection", "name": n}
                                           for n in sorted(names)]}

    @router.get("/v1/collections/{collection}/documents", scopes=READ)
    async def list_documents(collection: str) -> dict:
        documents = await _call(store().list_documents, collection)
        return {"object": "list", "data": [{"object": "document", **asdict(d)}
                                           for d in documents]}

    @router.post("/v1/collections/{collection}/documents", scopes=WRITE)
    async def add_document(collection: str, body: DocumentIn) -> JSONResponse:
        text, fmt = await _call(body.plain_text)
        result = await _call(store().add_text, collection, body.source, text, fmt)
        status = 201 if result.status == "added" else 200
        return JSONResponse({"object": "document", **asdict(result)}, status_code=status)

    @router.delete("/v1/collections/{collection}/documents/{document_id}", scopes=WRITE,
                   label="/v1/collections/{collection}/documents/{id}")
    async def delete_document(collection: str, document_id: str) -> dict:
        if not await _call(store().delete_document, collection, document_id):
            raise APIError(f"No document {document_id!r} in collection {collection!r}.",
                           status=404, code="not_found")
        return {"object": "document.deleted", "id": document_id, "deleted": True}

    @router.post("/v1/collections/{collection}/search", scopes=READ)
    async def search(collection: str, body: SearchIn) -> dict:
        check_top_k(store(), body.top_k)
        hits = await _call(store().search, collection, body.query, body.top_k)
        return {"object": "list", "data": [asdict(h) for h in hits]}
