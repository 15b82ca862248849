"""The databases and servers the tests run against: a migrated template database that every
server under test gets a copy of (SQLite, or PostgreSQL when DATABASE_URL names one), and
throwaway PostgreSQL and Redis servers started from the OS packages."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def with_database_name(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def query_rows(url: str, query: str, *parameters: Any) -> list[tuple]:
    """Rows of a query (with `?` placeholders) on the database at `url`."""
    if is_postgres(url):
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            cursor = connection.execute(query.replace("?", "%s"), parameters)
            return cursor.fetchall() if cursor.description else []
    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        return connection.execute(query, parameters).fetchall()


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=PROJECT_DIR,
        env={**os.environ, "DATABASE_URL": database_url, "LLAMA_SERVER_CONFIG": "/nonexistent.json"},
        check=True,
        capture_output=True,
    )


@dataclass
class DatabaseTemplate:
    """A migrated database; `copy` gives each server under test a database of its own."""

    url: str
    _copies = itertools.count()

    def copy(self, directory: Path) -> str:
        """The URL of a fresh copy: a file in `directory`, or a database cloned on the server."""
        if not is_postgres(self.url):
            database = directory / "db.sqlite3"
            shutil.copyfile(self.url.removeprefix("sqlite:///"), database)
            return f"sqlite:///{database}"
        template = urlsplit(self.url).path.lstrip("/")
        name = f"{template}_{os.getpid()}_{next(self._copies)}"
        query_rows(with_database_name(self.url, "postgres"), f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return with_database_name(self.url, name)


def create_template(directory: Path) -> DatabaseTemplate:
    """Migrate a template: on the PostgreSQL server of DATABASE_URL if it names one, else SQLite."""
    server_url = os.environ.get("DATABASE_URL", "")
    if is_postgres(server_url):
        name = f"llamasite_template_{os.getpid()}"
        query_rows(with_database_name(server_url, "postgres"), f'CREATE DATABASE "{name}"')
        url = with_database_name(server_url, name)
    else:
        url = f"sqlite:///{directory / 'template.sqlite3'}"
    migrate(url)
    return DatabaseTemplate(url)


def _postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    return found[-1] if found and found[-1] else None


def _as_owner(owner: str | None, command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the OS packages' `postgres` user then."""
    return ["runuser", "-u", owner, "--", *command] if owner else command


def wait_until_started(
    ready: Callable[[], bool], process: subprocess.Popen, failure: Callable[[], str], seconds: float = 30
) -> None:
    """Wait until `ready()`; if the process exits or takes longer, kill it and raise `failure()`."""
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(failure())
        time.sleep(0.1)


class PostgresServer:
    """A throwaway PostgreSQL server from the OS packages (trust auth, no fsync), its data in a
    temporary directory. `stop` and `start` again keep its port and data, as a restart does."""

    def __init__(self) -> None:
        self._initdb, self._postgres = _postgres_binary("initdb"), _postgres_binary("postgres")
        self._pg_ctl = _postgres_binary("pg_ctl")
        if not self._initdb or not self._postgres or not self._pg_ctl:
            raise LookupError("PostgreSQL is not installed (apt-get install postgresql)")
        self._owner = "postgres" if os.geteuid() == 0 else None
        self.data = Path(tempfile.mkdtemp(prefix="llamasite-pg-"))
        if self._owner:
            shutil.chown(self.data, self._owner)
        subprocess.run(
            _as_owner(
                self._owner, [self._initdb, "-D", str(self.data), "-U", "llamasite", "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        self.port = free_port()
        self.url = f"postgresql://llamasite@127.0.0.1:{self.port}"  # without a database name
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            _as_owner(
                self._owner,
                [
                    self._postgres,
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=self.data.with_name(f"{self.data.name}.log").open("a"),
        )

        def ready() -> bool:
            try:
                query_rows(f"{self.url}/postgres", "SELECT 1")
                return True
            except Exception:  # noqa: BLE001 — not accepting connections yet
                return False

        wait_until_started(ready, self._process, lambda: "PostgreSQL did not start")

    def stop(self) -> None:
        """Stop as an administrator's restart does: PostgreSQL's fast shutdown, which ends the
        clients' sessions (a plain SIGTERM would wait for every client to disconnect; runuser
        would not pass a SIGINT on)."""
        if self._process is not None and self._process.poll() is None:
            subprocess.run(
                _as_owner(self._owner, [self._pg_ctl, "stop", "-D", str(self.data), "-m", "fast", "-w"]),
                check=True,
                capture_output=True,
                timeout=60,
            )
            self._process.wait(timeout=30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server of the tests' own, removed afterwards. Raises LookupError if
    the OS has no PostgreSQL."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A throwaway redis-server (no persistence): its URL. Raises LookupError if not installed."""
    binary = shutil.which("redis-server")
    if not binary:
        raise LookupError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_until_started(ready, process, lambda: "redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)
