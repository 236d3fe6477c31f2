"""The document store: chunks of ingested documents in Chroma, searched by meaning.

We embed with our own Embedder and hand Chroma the vectors, so Chroma never runs (or
downloads) an embedding function of its own. Collections use cosine space; a hit's score is
the cosine similarity, 1 - Chroma's distance.

Identity: a document is its `source` within a collection. Its id is a short hash of the
source, its chunks are `<document id>:<n>`, and each chunk records the sha256 of the whole
text, so ingesting the same source again is a no-op when the text is unchanged and a
replacement when it changed.
"""

# No `from __future__ import annotations`: the search tool's Annotated bounds come from the
# settings at runtime, and the registry reads real annotations, not strings.

import asyncio
import hashlib
import re
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from openchat.access.scopes import DOCUMENTS_SCOPE
from openchat.config import DocumentSettings
from tools.chunking import chunk_text
from tools.embeddings import Embedder
from tools.readers import read_file, read_text
from tools.registry import Tool, tool

_COLLECTION_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9._-]{1,510})[a-zA-Z0-9]")
_PAGE = 1000  # chunks per Chroma get() when listing a whole collection


class CollectionNotFound(LookupError):
    """A collection that does not exist (searching never creates one)."""


@dataclass
class Hit:
    id: str
    document_id: str
    source: str
    text: str
    score: float  # cosine similarity in [-1, 1]; higher is closer


@dataclass
class IngestResult:
    document_id: str
    source: str
    chunks: int
    status: Literal["added", "replaced", "unchanged"]


@dataclass
class DocumentInfo:
    id: str
    source: str
    chunks: int
    ingested_at: str


def check_collection_name(name: str) -> str:
    """The name if Chroma accepts it, else a ValueError that says what is allowed."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise ValueError(f"invalid collection name {name!r}: use 3-512 characters from "
                         "[a-zA-Z0-9._-], starting and ending with a letter or digit")
    return name


def document_id(source: str) -> str:
    """A document's id: stable for its source, short enough to read in a tool result."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class DocumentStore:
    """Ingest, list, delete and search documents in an embedded or remote Chroma."""

    def __init__(self, settings: DocumentSettings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self._lock = threading.Lock()
        # Connect now, so a wrong path or an unreachable server shows at start-up.
        self._client: Any = _connect(settings)

    @property
    def client(self) -> Any:
        """The Chroma client (made again after close())."""
        with self._lock:
            if self._client is None:
                self._client = _connect(self.settings)
            return self._client

    def close(self) -> None:
        """Let go of the client (an embedded store's SQLite file with it); reconnects on use."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- ingestion -----------------------------------------------------------------------

    def add_text(self, collection: str, source: str, text: str,
                 format: str = "text") -> IngestResult:
        """Store `text` (format: text, markdown or html) as the document `source`."""
        check_collection_name(collection)
        if not source or not source.strip():
            raise ValueError("a document needs a source name")
        return self._store(collection, source, read_text(text, format))

    def add_file(self, path: str | Path, collection: str, *,
                 source: str | None = None) -> IngestResult:
        """Store a .txt/.md/.html/.pdf file. Its source defaults to the file's absolute
        path, so the same file is the same document from whatever directory it is
        ingested (a moved file becomes a new document)."""
        check_collection_name(collection)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return self._store(collection, source or str(path.resolve()), read_file(path))

    def _store(self, collection: str, source: str, text: str) -> IngestResult:
        if not text.strip():
            raise ValueError(f"{source} has no text to ingest")
        doc_id = document_id(source)
        digest = hashlib.sha256(text.encode()).hexdigest()
        chunks = chunk_text(text, self.settings.chunk_size, self.settings.chunk_overlap)
        target = self._collection(collection, create=True)
        chunking = f"{self.settings.chunk_size}/{self.settings.chunk_overlap}"
        old = target.get(where={"document_id": doc_id}, include=["metadatas"])
        old_ids = set(old["ids"])
        # Same text cut the same way: nothing to do (other chunk settings re-cut it).
        if old_ids and len(old_ids) == len(chunks) and all(
                m.get("sha256") == digest and m.get("chunking") == chunking
                for m in old["metadatas"]):
            return IngestResult(doc_id, source, len(chunks), "unchanged")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        ids = [f"{doc_id}:{n}" for n in range(len(chunks))]
        metadatas = [{"document_id": doc_id, "source": source, "chunk": n,
                      "chunks": len(chunks), "sha256": digest, "chunking": chunking,
                      "ingested_at": now}
                     for n in range(len(chunks))]
        # Write the new chunks before dropping the old ones, so the document is never
        # missing from search while it is being replaced.
        target.upsert(ids=ids, documents=chunks, metadatas=metadatas,
                      embeddings=self.embedder.embed(chunks))
        stale = sorted(old_ids - set(ids))
        if stale:
            target.delete(ids=stale)
        return IngestResult(doc_id, source, len(chunks), "replaced" if old_ids else "added")

    # -- browsing ------------------------------------------------------------------------

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.list_collections())

    def list_documents(self, collection: str) -> list[DocumentInfo]:
        """Every document of a collection, by source."""
        target = self._collection(collection)
        found: dict[str, DocumentInfo] = {}
        offset = 0
        while True:
            page = target.get(include=["metadatas"], limit=_PAGE, offset=offset)
            for meta in page["metadatas"]:
                info = found.setdefault(meta["document_id"], DocumentInfo(
                    meta["document_id"], meta["source"], 0, meta["ingested_at"]))
                info.chunks += 1
            if len(page["ids"]) < _PAGE:
                break
            offset += _PAGE
        return sorted(found.values(), key=lambda d: (d.source, d.id))

    def delete_document(self, collection: str, document_id: str) -> bool:
        """Remove a document's chunks; False when the collection or document is unknown."""
        try:
            target = self._collection(collection)
        except CollectionNotFound:
            return False
        ids = target.get(where={"document_id": document_id}, include=[])["ids"]
        if ids:
            target.delete(ids=ids)
        return bool(ids)

    # -- search --------------------------------------------------------------------------

    def search(self, collection: str, query: str, top_k: int = 5) -> list[Hit]:
        """The `top_k` chunks closest in meaning to `query`, best first."""
        if not query or not query.strip():
            raise ValueError("the query is empty")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        target = self._collection(collection)
        found = target.query(query_embeddings=self.embedder.embed([query]), n_results=top_k,
                             include=["documents", "metadatas", "distances"])
        return [Hit(id=chunk_id, document_id=meta["document_id"], source=meta["source"],
                    text=text, score=round(1.0 - distance, 4))
                for chunk_id, text, meta, distance in zip(
                    found["ids"][0], found["documents"][0], found["metadatas"][0],
                    found["distances"][0])]

    def tools(self) -> list[Tool]:
        """The model's tools over this store: search_documents."""
        settings = self.settings
        search = self.search

        @tool(DOCUMENTS_SCOPE)
        async def search_documents(
            query: Annotated[str, Field(min_length=1, description=(
                "What to look for, as a question or a few descriptive words; matched by "
                "meaning, not exact words."))],
            collection: Annotated[str, Field(description=(
                "The document collection to search."))] = settings.default_collection,
            top_k: Annotated[int, Field(ge=1, le=settings.max_top_k, description=(
                "How many passages to return."))] = min(5, settings.max_top_k),
        ) -> dict[str, Any]:
            """Search the ingested documents (policies, manuals, notes) for passages
            relevant to a question. Returns {"results": [...]}, best match first; each result
            has `text` (the passage), `source` (the document it comes from, to cite),
            `document_id`, `id` (of the passage) and `score` (cosine similarity, 1 is
            closest; below about 0.3 the passage is probably unrelated)."""
            hits = await asyncio.to_thread(search, collection, query, top_k)
            return {"results": [asdict(hit) for hit in hits]}

        return [search_documents]

    # -- Chroma --------------------------------------------------------------------------

    def _collection(self, name: str, *, create: bool = False) -> Any:
        check_collection_name(name)
        if create:
            return self.client.get_or_create_collection(
                name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
        from chromadb.errors import NotFoundError

        try:
            return self.client.get_collection(name, embedding_function=None)
        except NotFoundError:
            known = ", ".join(self.collections()) or "none"
            raise CollectionNotFound(f"no document collection named {name!r} "
                                     f"(collections: {known})") from None


def _connect(settings: DocumentSettings) -> Any:
    """An HTTP client for `settings.url`, else an embedded store at `settings.path`."""
    import chromadb
    from chromadb.config import Settings

    # No network here: Chroma's anonymized telemetry stays off.
    options = Settings(anonymized_telemetry=False)
    if not settings.url:
        Path(settings.path).mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=settings.path, settings=options)
    url = urlsplit(settings.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"documents.url must be http(s)://host[:port], got {settings.url!r}")
    ssl = url.scheme == "https"
    return chromadb.HttpClient(host=url.hostname, port=url.port or (443 if ssl else 8000),
                               ssl=ssl, settings=options)
