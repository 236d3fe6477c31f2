"""The rules for SQL database URLs, shared by the key store (access/keys.py) and the SQL
tools (tools/sql.py): SQLite must be a file (an in-memory database is empty for every
new connection), PostgreSQL goes through psycopg 3, the one driver in the lock. And how
the service's own stores create (and extend) their tables when several workers start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    URL,
    DateTime,
    Engine,
    MetaData,
    Table,
    TypeDecorator,
    inspect,
    make_url,
    text,
)
from sqlmodel import create_engine


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


def open_engine(url: str, what: str) -> Engine:
    """An engine for one of the service's own stores (keys, responses) at `url`: a SQLite
    file (its directory made) or PostgreSQL. The pool is thread-safe; callers take a short
    session per call."""
    parsed = make_url(url)
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        path = sqlite_file(parsed, what)
        path.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(path))
    elif dialect == "postgresql":
        parsed = psycopg_url(parsed)
    else:
        raise ValueError(f"{what} supports SQLite and PostgreSQL, not {dialect}")
    # SQLite lets one writer in at a time; the others wait up to `timeout` seconds (5 by
    # default, which two batch runners' claims on a busy host have exceeded).
    connect_args = {"timeout": 30} if dialect == "sqlite" else {}
    return create_engine(parsed, pool_pre_ping=dialect == "postgresql",
                         connect_args=connect_args)


# Any constant works: it only has to be the same in every worker that creates the tables.
_SCHEMA_LOCK = 0x6F70656E63686174  # "openchat"


def create_tables(engine: Engine, metadata: MetaData,
                  added_columns: Mapping[Table, Iterable[str]] | None = None) -> None:
    """Create `metadata`'s missing tables and indexes, and add the `added_columns` that a
    table made by an earlier version lacks (create_all adds none; they are nullable, so
    old rows read None), in one transaction holding the database's schema lock, so that
    workers starting together take turns. Without it, SQLite runs a table's CREATE and
    its unique index's CREATE as two statements, and a worker can insert between them:
    the index then fails and is never made."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, now
        else:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": _SCHEMA_LOCK})
        metadata.create_all(connection)
        for table, names in (added_columns or {}).items():
            present = {column["name"] for column in inspect(connection).get_columns(table.name)}
            for name in names:
                if name not in present:
                    kind = table.c[name].type.compile(dialect=engine.dialect)
                    connection.execute(
                        text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))
        connection.commit()


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
