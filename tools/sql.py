"""The SQL tools: sql_query, list_tables, describe_table and the configured named queries.

Read-only is the database's job, not a string check's: on SQLite the tools' connections are
opened read-only (`mode=ro`), with `query_only` and an authorizer that allows reading only;
on PostgreSQL every call runs in a READ ONLY transaction (ideally as a SELECT-only role)
that is rolled back, and user SQL goes through the extended protocol, which refuses more
than one statement. Each call has a row limit and a statement timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, create_model
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    func,
    inspect,
    make_url,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlmodel import create_engine

from openchat.access.scopes import SQL_SCOPE
from openchat.config import NamedQuery, SQLSettings
from openchat.databases import psycopg_url, sqlite_file
from tools.named_queries import arguments_model, check_named_query, placeholders
from tools.registry import Tool, tool
from tools.sample_data import create_sample_data

BUILT_IN = ("sql_query", "list_tables", "describe_table")
RESULT_SHAPE = ('{"columns": [...], "rows": [[...], ...], "row_count": n, "truncated": '
                'true when there were more rows}')
_STRICT = ConfigDict(extra="forbid")
_NO_ROWS = "the statement returned no rows; these tools only run queries"

Value = str | int | float | bool | None


class QueryError(RuntimeError):
    """A statement the database refused or could not run; the message is for the model."""


class SQLDatabase:
    """One SQL data source: a writer engine for the sample data, a read-only one for tools."""

    def __init__(self, settings: SQLSettings) -> None:
        self.settings = settings
        url = make_url(settings.url)
        self.dialect = url.get_backend_name()
        if self.dialect == "sqlite":
            self.path = sqlite_file(url, "the SQL tools")
            self._writer = create_engine(url.set(database=str(self.path)))
            self._reader = _sqlite_reader(self.path, settings.statement_timeout_s)
        elif self.dialect == "postgresql":
            self._writer = create_engine(psycopg_url(url))
            reader_url = make_url(settings.read_only_url) if settings.read_only_url else url
            self._reader = _postgres_reader(psycopg_url(reader_url), settings.statement_timeout_s)
        else:
            raise ValueError(f"the SQL tools support SQLite and PostgreSQL, not {self.dialect}")

    def prepare(self) -> None:
        """Create the parent directory of a SQLite file, and the sample shop if asked."""
        if self.dialect == "sqlite":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.settings.sample_data:
            create_sample_data(self._writer)

    def dispose(self) -> None:
        self._reader.dispose()
        self._writer.dispose()

    def tools(self) -> list[Tool]:
        """The built-in tools and one per named query (checked here, raising ValueError)."""
        for name, query in self.settings.named_queries.items():
            check_named_query(name, query, reserved=BUILT_IN)
        tables = self.readable_tables()
        return [self._sql_query_tool(), self._list_tables_tool(),
                self._describe_table_tool(tables),
                *(self._named_query_tool(name, query)
                  for name, query in self.settings.named_queries.items())]

    # The work itself (blocking; the tools run it in a thread).

    def query(self, sql: str, parameters: dict[str, Value]) -> dict[str, Any]:
        """Run one read-only statement; at most max_rows rows come back."""
        _check_parameters(sql, parameters)
        statement = text(sql)
        limit = self.settings.max_rows
        with self._reading() as conn:
            if self.dialect == "postgresql":
                columns, rows = _postgres_rows(conn, statement, parameters, limit + 1)
            else:
                result = conn.execute(statement, parameters)
                try:
                    if not result.returns_rows:
                        raise QueryError(_NO_ROWS)
                    columns, rows = list(result.keys()), result.fetchmany(limit + 1)
                finally:
                    result.close()  # releases SQLite's read lock at once
        return {"columns": columns,
                "rows": [[_json_value(v) for v in row] for row in rows[:limit]],
                "row_count": min(len(rows), limit), "truncated": len(rows) > limit}

    def readable_tables(self) -> list[str]:
        with self._reading() as conn:
            return _readable_tables(conn)

    def list_tables(self) -> dict[str, Any]:
        tables = []
        with self._reading() as conn:
            inspector = inspect(conn)
            for name in _readable_tables(conn):
                count = conn.execute(select(func.count()).select_from(table(name)))
                tables.append({"name": name, "row_count": count.scalar_one(),
                               "columns": [c["name"] for c in inspector.get_columns(name)]})
        return {"tables": tables}

    def describe_table(self, name: str) -> dict[str, Any]:
        with self._reading() as conn:
            if name not in _readable_tables(conn):
                raise QueryError(f"there is no table {name!r}; list_tables names them")
            inspector = inspect(conn)
            keys = set(inspector.get_pk_constraint(name)["constrained_columns"] or ())
            columns = [{"name": c["name"], "type": _type_name(c["type"], conn),
                        "nullable": bool(c["nullable"]), "primary_key": c["name"] in keys}
                       for c in inspector.get_columns(name)]
            foreign_keys = [{"columns": fk["constrained_columns"],
                             "references": fk["referred_table"],
                             "referred_columns": fk["referred_columns"]}
                            for fk in inspector.get_foreign_keys(name)]
        return {"table": name, "columns": columns, "foreign_keys": foreign_keys}

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read-only transaction with the statement timeout, always rolled back."""
        timeout = self.settings.statement_timeout_s
        raw = None
        try:
            with self._reader.connect() as conn:
                raw = conn.connection.driver_connection
                if self.dialect == "postgresql":
                    # Per transaction, not trusting the session defaults set at connect.
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                                 {"ms": str(math.ceil(timeout * 1000))})
                else:
                    raw.start(timeout)
                try:
                    yield conn
                finally:
                    if self.dialect == "sqlite":
                        raw.deadline = None
                    conn.rollback()
        except (DBAPIError, self._reader.dialect.loaded_dbapi.Error) as exc:
            orig = exc.orig if isinstance(exc, DBAPIError) else exc
            denied = getattr(raw, "denied", None)
            raise QueryError(_explain(orig, timeout, denied)) from exc

    # Tools: what the model sees.

    def _sql_query_tool(self) -> Tool:
        name = "PostgreSQL" if self.dialect == "postgresql" else "SQLite"

        @tool(SQL_SCOPE, name="sql_query", description=(
            f"Run one read-only SQL query ({name} dialect) and return its result as "
            f"{RESULT_SHAPE}; at most {self.settings.max_rows} rows, dates as ISO strings. "
            "Put values in `parameters` and write them as :name in the SQL. Writes are "
            "refused. list_tables and describe_table show the schema."))
        async def sql_query(
            sql: Annotated[str, Field(max_length=4000, description="Exactly one SELECT "
                                      "(or WITH ... SELECT) statement.")],
            parameters: Annotated[dict[str, Value], Field(
                description="Values for the :name placeholders in the SQL.")] = {},
        ) -> dict[str, Any]:
            return await asyncio.to_thread(self.query, sql, parameters)

        return sql_query

    def _list_tables_tool(self) -> Tool:
        @tool(SQL_SCOPE, name="list_tables", description=(
            "List the database's tables; returns {\"tables\": [{\"name\": ..., "
            "\"row_count\": n, \"columns\": [column names]}]}."))
        async def list_tables() -> dict[str, Any]:
            return await asyncio.to_thread(self.list_tables)

        return list_tables

    def _describe_table_tool(self, tables: list[str]) -> Tool:
        # An enum of today's tables: constrained decoding can then only pick a real one.
        kind = Literal[tuple(tables)] if tables else str
        arguments = create_model("describe_table_arguments", __config__=_STRICT,
                                 table=(kind, Field(description="The table to describe.")))

        async def describe_table(table: str) -> dict[str, Any]:
            return await asyncio.to_thread(self.describe_table, table)

        return Tool("describe_table", (
            "Describe one table; returns {\"table\": ..., \"columns\": [{\"name\", \"type\", "
            "\"nullable\", \"primary_key\"}], \"foreign_keys\": [{\"columns\", "
            "\"references\" (a table), \"referred_columns\"}]}."),
            SQL_SCOPE, arguments, describe_table)

    def _named_query_tool(self, name: str, query: NamedQuery) -> Tool:
        async def run(**values: Value) -> dict[str, Any]:
            return await asyncio.to_thread(self.query, query.sql, values)

        description = (f"{query.description.rstrip('.')}. Returns {RESULT_SHAPE}, at most "
                       f"{self.settings.max_rows} rows.")
        return Tool(name, description, SQL_SCOPE, arguments_model(name, query), run)

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"SQLDatabase({self.dialect})"


# Engines.

def _sqlite_reader(path: Path, timeout: float) -> Engine:
    uri = f"{path.as_uri()}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False,
                               factory=_ReadOnlySQLite)

    return create_engine(f"sqlite:///{path}", creator=connect)


def _postgres_reader(url: URL, timeout: float) -> Engine:
    ms = math.ceil(timeout * 1000)
    options = f"-c default_transaction_read_only=on -c statement_timeout={ms}"
    return create_engine(url, pool_pre_ping=True, connect_args={
        "options": options, "application_name": "openchat-sql-tools",
        "connect_timeout": max(2, math.ceil(timeout)),
    })


class _ReadOnlySQLite(sqlite3.Connection):
    """A SQLite connection that can only read, and stops a statement at its deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: float | None = None
        self.denied: str | None = None  # what the authorizer refused last, for the message
        self.execute("PRAGMA query_only = ON")
        self.set_authorizer(self._authorize)
        self.set_progress_handler(self._past_deadline, 1000)

    def start(self, timeout: float) -> None:
        self.deadline, self.denied = time.monotonic() + timeout, None

    def _past_deadline(self) -> int:
        return int(self.deadline is not None and time.monotonic() > self.deadline)

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if action in _READ_ACTIONS and not (action == sqlite3.SQLITE_FUNCTION
                                            and (arg2 or "").lower() == "load_extension"):
            return sqlite3.SQLITE_OK
        pragma = (arg1 or "").lower()
        if action == sqlite3.SQLITE_PRAGMA and (
                pragma in _SCHEMA_PRAGMAS or (pragma in _SETTING_PRAGMAS and arg2 is None)):
            return sqlite3.SQLITE_OK
        if self.denied is None:  # the first refusal is the one that stopped the statement
            setting = action == sqlite3.SQLITE_PRAGMA and arg2 is not None
            self.denied = " ".join(filter(None, [
                _ACTIONS.get(action, str(action)), arg1, f"= {arg2}" if setting else arg2]))
        return sqlite3.SQLITE_DENY


_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                 sqlite3.SQLITE_RECURSIVE}
# PRAGMAs that take a table or index name and only read the schema.
_SCHEMA_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                   "index_xinfo", "foreign_key_list"}
# Settings that may be read (no value) but never set; SQLAlchemy reads read_uncommitted.
_SETTING_PRAGMAS = {"read_uncommitted", "user_version", "schema_version", "application_id",
                    "journal_mode", "foreign_keys", "encoding", "page_size", "query_only"}
_ACTIONS = {getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ") for name in (
    "ALTER_TABLE ANALYZE ATTACH CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX "
    "CREATE_TEMP_TABLE CREATE_TEMP_TRIGGER CREATE_TEMP_VIEW CREATE_TRIGGER CREATE_VIEW "
    "CREATE_VTABLE DELETE DETACH DROP_INDEX DROP_TABLE DROP_TEMP_INDEX DROP_TEMP_TABLE "
    "DROP_TEMP_TRIGGER DROP_TEMP_VIEW DROP_TRIGGER DROP_VIEW DROP_VTABLE FUNCTION INSERT "
    "PRAGMA REINDEX SAVEPOINT TRANSACTION UPDATE").split()}


# Running statements.

def _postgres_rows(conn: Connection, statement: Any, parameters: dict[str, Value],
                   limit: int) -> tuple[list[str], list[tuple]]:
    """Fetch at most `limit` rows with psycopg's stream(): the extended protocol (one
    statement only, whatever the text holds) and no more rows in memory than we keep."""
    compiled = statement.compile(dialect=conn.dialect)
    sql, values = compiled.string, compiled.construct_params(parameters)
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:
        rows_iter = cursor.stream(sql, values)
        try:
            rows = list(islice(rows_iter, limit))
        finally:
            rows_iter.close()  # cancels the rest of a longer result
        if rows:
            return [c.name for c in cursor.description], rows
    return _postgres_columns(raw, sql, values), []


def _postgres_columns(raw: Any, sql: str, values: dict[str, Value]) -> list[str]:
    """The column names of a query that returned no rows (stream() keeps none): parse it
    again, with the values inlined by psycopg, and describe it without running it."""
    from psycopg import ClientCursor, pq

    with ClientCursor(raw) as cursor:
        literal = cursor.mogrify(sql, values).encode(raw.info.encoding)
    if raw.pgconn.prepare(b"", literal).status != pq.ExecStatus.COMMAND_OK:
        return []
    described = raw.pgconn.describe_prepared(b"")
    return [described.fname(i).decode(raw.info.encoding) for i in range(described.nfields)]


def _readable_tables(conn: Connection) -> list[str]:
    names = sorted(inspect(conn).get_table_names())
    if conn.dialect.name != "postgresql":
        return names
    # A SELECT-only role may see tables it cannot read: leave those out.
    readable = text("SELECT has_table_privilege(quote_ident(:name), 'SELECT')")
    return [n for n in names if conn.execute(readable, {"name": n}).scalar()]


def _explain(error: BaseException, timeout: float, denied: str | None) -> str:
    """The database's complaint in words the model can act on (never the URL)."""
    message = str(error).strip()
    state = getattr(error, "sqlstate", None)
    if state == "57014" or message == "interrupted":
        return f"the query ran longer than {timeout:g} s and was cancelled"
    if "multiple commands" in message or "one statement at a time" in message:
        return "send exactly one SQL statement per call"
    if state in ("25006", "42501") or any(
            words in message for words in ("not authorized", "authorization denied", "readonly")):
        detail = f"{denied} is not allowed" if denied else message
        return f"refused: these tools may only read ({detail})"
    if "didn't produce a result" in message:  # psycopg's stream() after a non-query
        return _NO_ROWS
    if "unable to open database file" in message:
        return "the SQLite database file cannot be opened (does it exist?)"
    return message


def _check_parameters(sql: str, parameters: dict[str, Value]) -> None:
    names = placeholders(sql)
    if missing := sorted(names - parameters.keys()):
        raise ValueError(f"no value for {', '.join(':' + n for n in missing)} in parameters")
    if unused := sorted(parameters.keys() - names):
        raise ValueError(f"parameters {', '.join(unused)} are not used in the SQL "
                         "(write them as :name)")


# Values and named queries.

def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        # 15 significant digits, as SQLite's own shell prints them: 3 * 19.99 is 59.97.
        return float(f"{value:.15g}") if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


def _type_name(kind: Any, conn: Connection) -> str:
    try:
        return kind.compile(dialect=conn.dialect)
    except Exception:  # a type the dialect cannot spell (e.g. NullType)
        return str(kind.__class__.__name__).upper()
