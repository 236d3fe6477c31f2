"""Server-side tools the model can call, over the organisation's own data.

`DataSources.open(settings)` connects the SQL database (sql.py) and the document store
(documents.py, embeddings from embeddings.py) and gathers their tools in one Registry
(registry.py). A source that cannot be opened is logged and left out, so inference keeps
serving while the data source is fixed; its tools and endpoints are then absent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tools.registry import Registry

logger = logging.getLogger("openchat.tools")


@dataclass
class DataSources:
    registry: Registry = field(default_factory=Registry)
    database: Any = None  # tools.sql.SQLDatabase
    documents: Any = None  # tools.documents.DocumentStore
    embedder: Any = None  # tools.embeddings.Embedder

    @classmethod
    def open(cls, settings) -> DataSources:
        from tools.documents import DocumentStore
        from tools.embeddings import Embedder
        from tools.sql import SQLDatabase

        sources = cls()
        try:
            database = SQLDatabase(settings.sql)
            database.prepare()
            for tool in database.tools():
                sources.registry.add(tool)
            sources.database = database
        except Exception as exc:
            logger.error("SQL data source unavailable, its tools are off: %s", exc)
        sources.embedder = Embedder()
        sources.embedder.embed(["warm-up"])  # load now, not on the first request
        try:
            sources.documents = DocumentStore(settings.documents, sources.embedder)
            for tool in sources.documents.tools():
                sources.registry.add(tool)
        except Exception as exc:
            logger.error("document store unavailable, its tools are off: %s", exc)
        logger.info("server tools: %s", ", ".join(t.name for t in sources.registry) or "none")
        return sources

    def close(self) -> None:
        if self.database is not None:
            self.database.dispose()
        if self.documents is not None:
            self.documents.close()
