"""The Responses API's `file_search` tool, run by the service over its document collections.

A request's `{"type": "file_search", "vector_store_ids": [...]}` becomes a server tool
named `file_search` for that request only: the model writes a query, the service searches
the named Chroma collections (best matches across them), and the model reads numbered
passages to cite as `[n]`. Those markers in the answer become `file_citation` annotations
on the text, naming the document each passage came from.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from pydantic import Field

from openchat.access.scopes import DOCUMENTS_SCOPE
from openchat.generation.response_items import FILE_SEARCH
from openchat.protocol.errors import invalid_param
from openchat.protocol.responses import FileSearchTool
from tools.documents import CollectionNotFound, DocumentStore, Hit
from tools.registry import Tool, tool

DEFAULT_RESULTS = 5  # what OpenAI's file_search returns unless told otherwise (up to 50)
_MARKER = re.compile(r"\[(\d{1,3})\]")
# A bounded query, so a call always fits in a few hundred tokens.
QUERY = Field(min_length=1, max_length=200, description=(
    "What to look for, as a question or a few descriptive words; matched by meaning, not "
    "exact words."))


class FileSearch:
    """One request's file_search: the tool the model calls and the passages it was shown,
    numbered across every search of the request."""

    def __init__(self, documents: DocumentStore, spec: FileSearchTool) -> None:
        self.documents = documents
        self.collections = list(dict.fromkeys(spec.vector_store_ids))
        self.top_k = min(spec.max_num_results or DEFAULT_RESULTS,
                         documents.settings.max_top_k)
        self.sources: list[Hit] = []

    def check(self) -> None:
        """Every named collection exists (a 400 before any generation)."""
        known = set(self.documents.collections())
        for i, name in enumerate(self.collections):
            if name not in known:
                raise invalid_param(f"tools.vector_store_ids[{i}]", f"No document "
                                    f"collection named {name!r}; GET /v1/collections lists "
                                    "them.")

    def tool(self) -> Tool:
        search = self.search

        @tool(DOCUMENTS_SCOPE, name=FILE_SEARCH)
        async def file_search(query: Annotated[str, QUERY]) -> dict[str, Any]:
            """Search the documents the user gave you (policies, manuals, notes) for
            passages relevant to a question. Returns {"results": [...]}, best match first;
            each has `n` (cite the passage as [n] in your answer), `text`, `filename` and
            `score` (cosine similarity, 1 is closest)."""
            return {"results": await asyncio.to_thread(search, query)}

        return file_search

    def search(self, query: str) -> list[dict[str, Any]]:
        hits: list[Hit] = []
        for name in self.collections:
            try:
                hits += self.documents.search(name, query, self.top_k)
            except CollectionNotFound:  # deleted since the request was checked
                continue
        best = sorted(hits, key=lambda hit: hit.score, reverse=True)[: self.top_k]
        results = []
        for hit in best:
            self.sources.append(hit)
            results.append({"n": len(self.sources), "file_id": hit.document_id,
                            "filename": hit.source, "score": hit.score, "text": hit.text})
        return results

    def citations(self, text: str) -> list[dict[str, Any]]:
        """`[n]` markers naming a passage the model was shown, as file_citation
        annotations at the marker's position; other brackets are left alone."""
        annotations = []
        for match in _MARKER.finditer(text):
            n = int(match.group(1))
            if 1 <= n <= len(self.sources):
                hit = self.sources[n - 1]
                annotations.append({"type": "file_citation", "file_id": hit.document_id,
                                    "filename": hit.source, "index": match.start()})
        return annotations
