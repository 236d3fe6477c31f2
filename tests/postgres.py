"""A real, throwaway PostgreSQL server for tests: `with running_postgres() as pg: ...`.

initdb refuses to run as root, so as root the server commands run as the `postgres` OS user
in a temporary directory it owns. The server listens on 127.0.0.1 (a free port) and on a
unix socket inside that directory; everything is stopped and deleted on exit.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tests.ports import free_port

DATABASE = "openchat"
OWNER = "openchat"
READER = "openchat_reader"
SERVER_USER = "postgres"  # the OS user (and superuser role) when we run as root
# Debian's packages put the server's programs in a directory per major version.
BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


@dataclass(frozen=True)
class Postgres:
    url: str  # the owner, who may write (creates the sample tables)
    read_only_url: str  # openchat_reader: CONNECT, USAGE and SELECT only
    port: int
    directory: Path


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="openchat-pg-"))
    data, log = root / "data", root / "server.log"
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(root, SERVER_USER, SERVER_USER)
    try:
        try:
            _run(as_root, initdb, "-D", str(data), "-U", SERVER_USER, "-E", "UTF8",
                 "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off")
            _run(as_root, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w",
                 "-t", "30", "start")
        except subprocess.CalledProcessError as exc:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{server_log}") from exc
        owner_password, reader_password = secrets.token_hex(12), secrets.token_hex(12)
        _create_roles(root, port, owner_password, reader_password)
        yield Postgres(
            url=_url(OWNER, owner_password, port),
            read_only_url=_url(READER, reader_password, port),
            port=port, directory=root,
        )
    finally:
        if (data / "postmaster.pid").exists():
            _run(as_root, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop",
                 check=False)
        shutil.rmtree(root, ignore_errors=True)


def _create_roles(socket_dir: Path, port: int, owner_password: str,
                  reader_password: str) -> None:
    """The owner writes; the reader may read every table the owner creates, now or later."""
    admin = dict(host=str(socket_dir), port=port, user=SERVER_USER, autocommit=True)
    with psycopg.connect(dbname="postgres", **admin) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(OWNER), sql.Literal(owner_password)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(READER), sql.Literal(reader_password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(DATABASE), sql.Identifier(OWNER)))
    with psycopg.connect(dbname=DATABASE, **admin) as conn:
        for statement in (
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC",
            "GRANT CONNECT ON DATABASE {db} TO {reader}",
            "GRANT USAGE ON SCHEMA public TO {reader}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
            "GRANT SELECT ON TABLES TO {reader}",
        ):
            conn.execute(sql.SQL(statement).format(
                db=sql.Identifier(DATABASE), owner=sql.Identifier(OWNER),
                reader=sql.Identifier(READER)))


def _url(user: str, password: str, port: int) -> str:
    return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{port}/{DATABASE}"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in BIN_DIRS if (Path(d) / name).exists()), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (not on PATH nor in "
                           "/usr/lib/postgresql/*/bin); install postgresql to run these tests")
    return found


def _run(as_root: bool, *command: str, check: bool = True) -> None:
    prefix = ["runuser", "-u", SERVER_USER, "--"] if as_root else []
    subprocess.run([*prefix, *command], check=check, capture_output=True, text=True,
                   timeout=60, cwd="/")


def store_url(request, tmp_path: Path, filename: str, table: str) -> Iterator[str]:
    """For a fixture parametrized over ["sqlite", "postgresql"]: a SQLite file in a
    directory still to be made, or the module's `postgres` server, whose `table` is
    dropped afterwards (the server is shared by the module: each test starts clean)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/{filename}"
        return
    from sqlalchemy import create_engine, text

    url = request.getfixturevalue("postgres").url
    yield url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
