"""The SQL tools against real databases: a SQLite file and a throwaway PostgreSQL 15 server,
the latter both as the SELECT-only role and as the owner (so the READ ONLY transaction is
tested on its own). Expected rows are computed here from the sample data, not copied."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

from openchat.access.scopes import SQL_SCOPE
from openchat.config import NamedQuery, SQLSettings
from tests.postgres import running_postgres
from tools.named_queries import check_named_query
from tools.registry import Registry, ToolArgumentsError
from tools.sample_data import CUSTOMERS, ORDERS, PRODUCTS, create_sample_data
from tools.sql import QueryError, SQLDatabase

ROOT = Path(__file__).resolve().parent.parent
CONFIGURED = SQLSettings.model_validate(
    yaml.safe_load((ROOT / "configuration.yaml").read_text())["sql"])
PRICES = {name: Decimal(price) for name, _, price in PRODUCTS}
CATEGORIES = {name: category for name, category, _ in PRODUCTS}
KINDS = ["sqlite", "postgres-reader", "postgres-owner"]

# top_products, written so PostgreSQL can type :category (see test_top_products).
PORTABLE_TOP_PRODUCTS = NamedQuery(
    description="Best-selling products by units sold, optionally within one category.",
    sql="SELECT p.name, p.category, SUM(o.quantity) AS units "
        "FROM orders o JOIN products p ON p.id = o.product_id "
        "WHERE (CAST(:category AS TEXT) IS NULL OR p.category = :category) "
        "GROUP BY p.id, p.name, p.category ORDER BY units DESC LIMIT :limit",
    parameters={"category": {"required": False},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50,
                          "required": False, "default": 5}},
)
ORDERS_BY_STATUS = NamedQuery(
    description="How many orders have one status.",
    sql="SELECT count(*) AS orders FROM orders WHERE status = :status",
    parameters={"status": {"enum": ["pending", "shipped", "delivered", "cancelled"]}},
)


def run(coroutine):
    return asyncio.run(coroutine)


# Fixtures: one prepared database per kind, shared by the module.

@pytest.fixture(scope="session")
def postgres():
    with running_postgres() as pg:
        yield pg


def pytest_generate_tests(metafunc):
    """A test that uses a database runs on each kind, or on those named by @only(...)."""
    if "kind" in metafunc.fixturenames:
        kinds = getattr(metafunc.function, "kinds", KINDS)
        metafunc.parametrize("kind", kinds, indirect=True, scope="module")


def only(*kinds: str):
    def mark(test):
        test.kinds = list(kinds)
        return test
    return mark


@pytest.fixture(scope="module")
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def urls(kind, request, tmp_path_factory) -> dict:
    if kind == "sqlite":
        return {"url": f"sqlite:///{tmp_path_factory.mktemp('sql')}/data/shop.db",
                "read_only_url": None}
    pg = request.getfixturevalue("postgres")
    return {"url": pg.url, "read_only_url": pg.read_only_url if kind == "postgres-reader"
            else None}


@pytest.fixture(scope="module")
def make(urls):
    """Build SQLDatabases on this kind's database (prepared once); disposed at the end."""
    made = []

    def build(**overrides) -> SQLDatabase:
        named = {**CONFIGURED.named_queries, "portable_top_products": PORTABLE_TOP_PRODUCTS,
                 "orders_by_status": ORDERS_BY_STATUS}
        settings = SQLSettings(**{**CONFIGURED.model_dump(), "named_queries": named,
                                  **urls, **overrides})
        made.append(SQLDatabase(settings))
        return made[-1]

    build().prepare()
    yield build
    for database in made:
        database.dispose()


@pytest.fixture(scope="module")
def db(make) -> SQLDatabase:
    return make()


@pytest.fixture(scope="module")
def registry(db) -> Registry:
    registry = Registry()
    for tool in db.tools():
        registry.add(tool)
    return registry


@pytest.fixture(scope="module")
def snapshot(urls):
    """A fingerprint of everything in the database, read with the writer's URL."""
    engine = create_engine(urls["url"])

    def take() -> dict:
        with engine.connect() as conn:
            state = {}
            for name in sorted(inspect(conn).get_table_names()):
                rows = conn.execute(text(f'SELECT * FROM "{name}" ORDER BY 1')).all()
                state[name] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
            if conn.dialect.name == "sqlite":
                for pragma in ("user_version", "journal_mode", "query_only", "schema_version"):
                    state[pragma] = conn.exec_driver_sql(f"PRAGMA {pragma}").scalar()
            else:
                state["orders_id_seq"] = conn.execute(
                    text("SELECT last_value FROM orders_id_seq")).scalar()
            return state

    yield take
    engine.dispose()


def ok(registry: Registry, name: str, **arguments) -> dict:
    """Call a tool as the service does and return its successful result."""
    result = run(registry.run(name, arguments, timeout=10, max_bytes=1_000_000))
    assert result.ok, result.output
    return json.loads(result.output)


def error(registry: Registry, name: str, **arguments) -> str:
    """Call a tool as the service does and return the error the model would read."""
    result = run(registry.run(name, arguments, timeout=10, max_bytes=1_000_000))
    assert not result.ok, result.output
    return json.loads(result.output)["error"]


# The sample data.

def test_sample_data_is_what_the_docs_quote():
    assert len(CUSTOMERS) == 8 and len(PRODUCTS) == 10 and len(ORDERS) == 40
    assert len(set(CATEGORIES.values())) == 3
    units = Counter()
    for _, product, quantity, _, _ in ORDERS:
        units[product] += quantity
    assert len(set(units.values())) == len(PRODUCTS)  # no ties: top_products is stable
    assert len({ordered for *_, ordered, _ in ORDERS}) == len(ORDERS)


def test_prepare_is_idempotent(db, snapshot):
    before = snapshot()
    assert before["customers"][0] == 8 and before["products"][0] == 10
    assert before["orders"][0] == 40
    db.prepare()
    db.prepare()
    assert snapshot() == before


def test_prepare_makes_the_sqlite_directory_and_honours_sample_data(tmp_path):
    target = tmp_path / "new" / "dir" / "shop.db"
    empty = SQLDatabase(SQLSettings(url=f"sqlite:///{target}", sample_data=False))
    empty.prepare()
    assert target.parent.is_dir() and not target.exists()
    with pytest.raises(QueryError, match="cannot be opened"):  # read-only: never creates it
        empty.tools()
    sqlite3.connect(target).close()
    assert empty.list_tables() == {"tables": []}
    describe = next(t for t in empty.tools() if t.name == "describe_table")
    assert describe.parameters["properties"]["table"]["type"] == "string"  # no enum of none
    empty.dispose()

    shop = SQLDatabase(SQLSettings(url=f"sqlite:///{target}"))
    shop.prepare()
    assert not create_sample_data(shop._writer)  # already there: nothing happens
    assert [t["row_count"] for t in shop.list_tables()["tables"]] == [8, 40, 10]
    shop.dispose()


def test_in_memory_sqlite_and_other_databases_are_refused():
    with pytest.raises(ValueError, match="file path"):
        SQLDatabase(SQLSettings(url="sqlite://"))
    with pytest.raises(ValueError, match="SQLite and PostgreSQL"):
        SQLDatabase(SQLSettings(url="mysql://u:p@localhost/db"))


# The tools and their results.

def test_tools_have_schemas_scopes_and_descriptions(registry):
    assert set(registry.tools) == {"sql_query", "list_tables", "describe_table",
                                   "orders_for_customer", "top_products",
                                   "portable_top_products", "orders_by_status"}
    for tool in registry:
        assert tool.scope == SQL_SCOPE
        assert "return" in tool.description.lower(), tool.name
    table = registry.get("describe_table").parameters["properties"]["table"]
    assert table["enum"] == ["customers", "orders", "products"]
    top = registry.get("top_products").parameters
    assert top["properties"]["limit"] == {"type": "integer", "minimum": 1, "maximum": 50,
                                          "default": 5, "description": "How many products."}
    assert top.get("required", []) == []
    assert registry.get("orders_for_customer").parameters["required"] == ["email"]
    status = registry.get("orders_by_status").parameters["properties"]["status"]
    assert status["enum"] == ["pending", "shipped", "delivered", "cancelled"]


def test_list_tables(registry):
    tables = {t["name"]: t for t in ok(registry, "list_tables")["tables"]}
    assert {name: t["row_count"] for name, t in tables.items()} == {
        "customers": 8, "orders": 40, "products": 10}
    assert tables["orders"]["columns"] == ["id", "customer_id", "product_id", "quantity",
                                           "ordered_at", "status"]


def test_describe_table(registry, db):
    described = ok(registry, "describe_table", table="orders")
    columns = {c["name"]: c for c in described["columns"]}
    assert list(columns) == ["id", "customer_id", "product_id", "quantity", "ordered_at",
                             "status"]
    assert columns["id"]["primary_key"] and not columns["quantity"]["primary_key"]
    assert columns["status"]["nullable"] is False and "VARCHAR" in columns["status"]["type"]
    assert sorted((fk["columns"], fk["references"], fk["referred_columns"])
                  for fk in described["foreign_keys"]) == [
        (["customer_id"], "customers", ["id"]), (["product_id"], "products", ["id"])]
    assert "Input should be 'customers', 'orders' or 'products'" in error(
        registry, "describe_table", table="users")
    describe = next(tool for tool in db.tools() if tool.name == "describe_table")
    assert run(describe.call({"table": "customers"}))["table"] == "customers"
    with pytest.raises(QueryError, match="no table 'users'"):  # the handler checks too
        db.describe_table("users")


def test_orders_for_customer(registry):
    expected = [
        [number, ordered.replace(" ", "T") + ":00", status, product, quantity,
         float(quantity * PRICES[product])]
        for number, (email, product, quantity, ordered, status) in enumerate(ORDERS, 1)
        if email == "ada@example.com"
    ][::-1]
    result = ok(registry, "orders_for_customer", email="ada@example.com")
    assert result["columns"] == ["id", "ordered_at", "status", "product", "quantity", "total"]
    assert result["rows"] == expected
    assert result["row_count"] == 6 and result["truncated"] is False
    assert sum(row[-1] for row in result["rows"]) == pytest.approx(320.19)
    assert ok(registry, "orders_for_customer", email="nobody@example.com")["rows"] == []


def _top(category=None, limit=5):
    units = Counter()
    for _, product, quantity, _, _ in ORDERS:
        if category in (None, CATEGORIES[product]):
            units[product] += quantity
    return [[name, CATEGORIES[name], count] for name, count in units.most_common(limit)]


@pytest.mark.parametrize("name", ["portable_top_products", "top_products"])
def test_top_products(registry, kind, name, request):
    assert ok(registry, name)["rows"] == _top()
    assert ok(registry, name, category="books", limit=2)["rows"] == _top("books", 2)
    assert ok(registry, name, category="office", limit=50)["rows"] == _top("office", 50)
    assert ok(registry, name, category="toys")["rows"] == []
    assert "less than or equal to 50" in error(registry, name, limit=51)


def test_enum_parameter(registry):
    expected = sum(1 for *_, status in ORDERS if status == "pending")
    assert ok(registry, "orders_by_status", status="pending")["rows"] == [[expected]]
    assert "status" in error(registry, "orders_by_status", status="lost")


def test_sql_query_values_are_json_friendly(registry):
    result = ok(registry, "sql_query", sql="SELECT name, email, created_at FROM customers "
                "WHERE email = :email", parameters={"email": "ada@example.com"})
    assert result == {"columns": ["name", "email", "created_at"],
                      "rows": [["Ada Lovelace", "ada@example.com", "2023-01-15T09:30:00"]],
                      "row_count": 1, "truncated": False}
    prices = ok(registry, "sql_query", sql="SELECT name, price, price * 3 AS three "
                "FROM products ORDER BY id")["rows"]
    assert prices == [[name, float(price), float(price * 3)] for name, price in PRICES.items()]


def test_sql_query_binds_parameters(registry):
    count = "SELECT count(*) FROM orders WHERE quantity >= :q"
    assert ok(registry, "sql_query", sql=count, parameters={"q": 5})["rows"] == [
        [sum(1 for o in ORDERS if o[2] >= 5)]]
    cheap = "SELECT count(*) FROM products WHERE price < :p"
    assert ok(registry, "sql_query", sql=cheap, parameters={"p": 30.5})["rows"] == [
        [sum(1 for p in PRICES.values() if p < Decimal("30.5"))]]
    like = "SELECT count(*) FROM customers WHERE email LIKE :pattern AND name LIKE '%a%'"
    assert ok(registry, "sql_query", sql=like, parameters={"pattern": "%@example.com"})[
        "rows"] == [[sum(1 for name, *_ in CUSTOMERS if "a" in name)]]


@pytest.mark.parametrize("value", ["ada@example.com' OR '1'='1",
                                   "x'; DROP TABLE orders; --",
                                   "' UNION SELECT name FROM products --"])
def test_injection_in_a_parameter_stays_a_literal(registry, snapshot, value):
    before = snapshot()
    result = ok(registry, "sql_query", sql="SELECT name FROM customers WHERE email = :e",
                parameters={"e": value})
    assert result["rows"] == []
    assert ok(registry, "orders_for_customer", email=value)["rows"] == []
    assert snapshot() == before


def test_parameters_must_match_placeholders(registry):
    assert ":email" in error(registry, "sql_query",
                             sql="SELECT * FROM customers WHERE email = :email")
    assert "not used" in error(registry, "sql_query", sql="SELECT 1 AS one",
                               parameters={"x": 1})


def test_row_limit_and_truncated(make, kind):
    database = make(max_rows=5)
    registry = Registry()
    for tool in database.tools():
        registry.add(tool)
    some = ok(registry, "sql_query", sql="SELECT id FROM orders ORDER BY id")
    assert some == {"columns": ["id"], "rows": [[1], [2], [3], [4], [5]], "row_count": 5,
                    "truncated": True}
    exact = ok(registry, "sql_query", sql="SELECT id FROM orders ORDER BY id LIMIT 5")
    assert exact["truncated"] is False and exact["row_count"] == 5
    assert ok(registry, "portable_top_products", limit=50)["truncated"] is True
    # A huge result is cut without being produced in full (or held in memory).
    started = time.monotonic()
    huge = ok(registry, "sql_query", sql="WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL "
              "SELECT x + 1 FROM n WHERE x < 100000000) SELECT x FROM n")
    assert huge["rows"] == [[1], [2], [3], [4], [5]] and huge["truncated"] is True
    assert time.monotonic() - started < 3
    assert ok(registry, "sql_query", sql="SELECT count(*) FROM customers")["rows"] == [[8]]
    if kind == "sqlite":  # the cut-off statement holds no read lock: a writer may lock all
        writer = sqlite3.connect(database.path, timeout=0)
        writer.execute("BEGIN EXCLUSIVE")
        writer.rollback()
        writer.close()


def test_empty_result_keeps_its_columns(registry):
    result = ok(registry, "sql_query", sql="SELECT id, name AS who FROM customers "
                "WHERE country = :c", parameters={"c": "ZZ"})
    assert result == {"columns": ["id", "who"], "rows": [], "row_count": 0,
                      "truncated": False}


def test_statement_timeout(make):
    database = make(statement_timeout_s=0.5)
    registry = Registry()
    for tool in database.tools():
        registry.add(tool)
    started = time.monotonic()
    message = error(registry, "sql_query", sql="WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL "
                    "SELECT x + 1 FROM n) SELECT count(*) FROM n")
    assert "longer than 0.5 s" in message
    assert time.monotonic() - started < 3
    assert ok(registry, "sql_query", sql="SELECT count(*) FROM orders")["rows"] == [[40]]
    with pytest.raises(QueryError, match="longer than"):  # the same, called directly
        run(registry.get("sql_query").call({"sql": "WITH RECURSIVE n(x) AS (SELECT 1 "
                                                   "UNION ALL SELECT x + 1 FROM n) "
                                                   "SELECT max(x) FROM n"}))


# Writes: refused by the database, and nothing changes.

WRITES = [
    "INSERT INTO customers (name, email, country, created_at) "
    "VALUES ('Eve', 'eve@example.com', 'US', '2024-01-01')",
    "UPDATE products SET price = 0",
    "DELETE FROM orders",
    "DROP TABLE orders",
    "CREATE TABLE notes (id INTEGER)",
    "CREATE TEMP TABLE scratch AS SELECT * FROM orders",
    "CREATE INDEX orders_quantity ON orders (quantity)",
    "ALTER TABLE orders ADD COLUMN note TEXT",
    "SELECT 1; DELETE FROM orders",
    "SELECT 1 AS one; DROP TABLE orders",
    "WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone",
    "PRAGMA user_version = 5",
    "PRAGMA journal_mode = delete",
    "PRAGMA journal_mode = wal",
]
SQLITE_WRITES = [
    "ATTACH DATABASE '{tmp}/other.db' AS other",
    "PRAGMA user_version(7)",
    "PRAGMA query_only = OFF",
    "VACUUM",
    "ANALYZE",
    "REINDEX",
    "BEGIN",
    "SELECT load_extension('x')",
]
# Not an error itself (it returns a row), but forgotten with the rolled-back transaction.
SET_CONFIG = "SELECT set_config('default_transaction_read_only', 'off', false)"
POSTGRES_WRITES = [
    "COMMIT; SET default_transaction_read_only = off; DELETE FROM orders",
    "TRUNCATE orders",
    "SELECT nextval('orders_id_seq')",
    SET_CONFIG,
    "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "COMMIT",
    "DO $$ BEGIN DELETE FROM orders; END $$",
    "GRANT ALL ON orders TO PUBLIC",
]


@pytest.mark.parametrize("sql", WRITES)
def test_writes_are_refused_and_change_nothing(registry, snapshot, kind, sql, tmp_path):
    _attempt(registry, snapshot, kind, sql, tmp_path)


@only("sqlite")
@pytest.mark.parametrize("sql", SQLITE_WRITES)
def test_sqlite_writes_are_refused(registry, snapshot, kind, sql, tmp_path):
    _attempt(registry, snapshot, kind, sql.format(tmp=tmp_path), tmp_path)


@only("postgres-reader", "postgres-owner")
@pytest.mark.parametrize("sql", POSTGRES_WRITES)
def test_postgres_writes_are_refused(registry, snapshot, kind, sql, tmp_path):
    _attempt(registry, snapshot, kind, sql, tmp_path)


def _attempt(registry, snapshot, kind, sql, tmp_path):
    before = snapshot()
    if sql == SET_CONFIG:
        assert ok(registry, "sql_query", sql=sql)["rows"] == [["off"]]
        message = ""
    else:
        message = error(registry, "sql_query", sql=sql)
    # Whatever the attempt (a setting for the session included), a plain write still fails.
    assert error(registry, "sql_query", sql="DELETE FROM orders")
    assert snapshot() == before
    if kind != "sqlite":
        assert ok(registry, "sql_query", sql="SHOW default_transaction_read_only")[
            "rows"] == [["on"]]
    assert not (tmp_path / "other.db").exists()
    if sql.startswith("DELETE") and kind == "postgres-owner":
        assert "read-only transaction" in message  # the transaction alone refused it
    if sql.startswith("DELETE") and kind == "sqlite":
        assert message == "QueryError: refused: these tools may only read (DELETE orders " \
                          "is not allowed)"
    if ";" in sql and "$$" not in sql:
        assert "exactly one SQL statement" in message


def test_writes_raise_when_called_directly(db, snapshot):
    before = snapshot()
    tool = next(t for t in db.tools() if t.name == "sql_query")
    for sql in ("DELETE FROM orders", "SELECT 1; DELETE FROM orders", "DROP TABLE customers"):
        with pytest.raises(QueryError):
            run(tool.call({"sql": sql}))
    assert snapshot() == before


def test_reader_role_cannot_write_even_outside_the_tools(postgres):
    import psycopg

    url = postgres.read_only_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (40,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM orders")


def test_tables_the_reader_cannot_read_are_left_out(postgres):
    owner = create_engine(postgres.url)
    with owner.begin() as conn:
        conn.execute(text("CREATE TABLE api_keys (id INTEGER, secret TEXT)"))
        conn.execute(text("REVOKE SELECT ON api_keys FROM openchat_reader"))
    try:
        reader = SQLDatabase(SQLSettings(url=postgres.url,
                                         read_only_url=postgres.read_only_url))
        assert reader.readable_tables() == ["customers", "orders", "products"]
        with pytest.raises(QueryError, match="refused"):
            reader.query("SELECT * FROM api_keys", {})
        reader.dispose()
    finally:
        with owner.begin() as conn:
            conn.execute(text("DROP TABLE api_keys"))
        owner.dispose()


def test_errors_do_not_leak_the_password(postgres):
    wrong = postgres.read_only_url.replace("@", "x@")
    password = wrong.split(":")[2].split("@")[0]
    database = SQLDatabase(SQLSettings(url=postgres.url, read_only_url=wrong))
    with pytest.raises(QueryError) as raised:
        database.tools()
    assert password not in str(raised.value) and "password" in str(raised.value)
    assert password not in repr(database)
    database.dispose()


# Named queries are checked before they become tools.

@pytest.mark.parametrize(("query", "problem"), [
    ({"sql": "SELECT * FROM orders WHERE status = :status"}, ":status"),
    ({"sql": "SELECT * FROM orders", "parameters": {"status": {}}}, "never appear"),
    ({"sql": "SELECT * FROM orders LIMIT :n",
      "parameters": {"n": {"type": "integer", "enum": ["a", "b"]}}}, "enum values"),
    ({"sql": "SELECT * FROM orders LIMIT :n", "parameters": {"n": {
        "type": "integer", "minimum": 1, "maximum": 50, "required": False,
        "default": 100}}}, "default 100"),
    ({"sql": "SELECT * FROM orders WHERE status = :s",
      "parameters": {"s": {"minimum": 1}}}, "minimum and maximum"),
    ({"sql": "  "}, "empty"),
])
def test_named_query_validation(query, problem):
    with pytest.raises(ValueError, match=problem):
        check_named_query("bad", NamedQuery(description="d", **query))


@pytest.mark.parametrize("name", ["sql_query", "has space", "x" * 65])
def test_named_query_names(name):
    with pytest.raises(ValueError, match="tool name"):
        check_named_query(name, NamedQuery(description="d", sql="SELECT 1"),
                          reserved=("sql_query", "list_tables", "describe_table"))


def test_tools_refuses_a_bad_named_query(tmp_path):
    database = SQLDatabase(SQLSettings(url=f"sqlite:///{tmp_path}/shop.db", named_queries={
        "broken": NamedQuery(description="d", sql="SELECT * FROM orders WHERE id = :id")}))
    database.prepare()
    with pytest.raises(ValueError, match="sql.named_queries.broken: the SQL uses :id"):
        database.tools()
    database.dispose()


def test_configured_named_queries_are_valid():
    for name, query in CONFIGURED.named_queries.items():
        check_named_query(name, query)


def test_unknown_tool_argument_is_refused(registry):
    with pytest.raises(ToolArgumentsError):
        registry.get("orders_for_customer").validate({"email": "a", "extra": 1})
