"""The rules for SQL database URLs, shared by the key store (access/keys.py) and the SQL
tools (tools/sql.py): SQLite must be a file (an in-memory database is empty for every
new connection), PostgreSQL goes through psycopg 3, the one driver in the lock.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import URL


def sqlite_file(url: URL, what: str) -> Path:
    """The absolute path of a SQLite URL's file; `what` names the user in the error."""
    if url.database in (None, "", ":memory:") or url.database.startswith("file:"):
        raise ValueError(f"{what} needs a SQLite file path (sqlite:///path/to/file.db); an "
                         "in-memory database would be empty for every connection")
    return Path(url.database).resolve()


def psycopg_url(url: URL) -> URL:
    """A PostgreSQL URL on psycopg 3; other drivers are refused."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        raise ValueError(f"use postgresql+psycopg:// URLs (psycopg 3), not {url.drivername}")
    return url
