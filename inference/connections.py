"""The database connections of the threads that live long: the records thread, the model workers,
the executor threads that check API keys.

Django recycles a connection only around the requests it handles itself; a thread that outlives
many requests keeps its connection until it breaks, and then keeps the broken one (after a
database restart, every query on it fails). So each unit of work of such a thread runs through
`on_fresh_connection`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from inference.errors import DatabaseUnavailable

T = TypeVar("T")

# What a database that cannot be reached (stopped, restarting, the network gone) raises. Other
# errors (a constraint, bad data) fail again however often they are retried.
DATABASE_UNREACHABLE = (OperationalError, InterfaceError)


def on_fresh_connection(work: Callable[[], T]) -> T:
    """`work()` on the calling thread's connection, recycled first (closed if it failed or is
    older than CONN_MAX_AGE, checked before reuse with CONN_HEALTH_CHECKS), and once more on a
    new connection if the database fails during it; raises the second failure.

    Any thread may call it. Inside a transaction of the caller's own, `work` runs once, on that
    transaction's connection.
    """
    if connection.in_atomic_block:  # closing it would break the caller's transaction (a test's)
        return work()
    close_old_connections()
    try:
        return work()
    except DATABASE_UNREACHABLE:
        connection.close()
        return work()


def on_passing_connection(work: Callable[[], T]) -> T:
    """`on_fresh_connection(work)`, then the thread's connection closed: for a thread that is not
    back for more soon (a model's worker reads its settings once, as it loads). Left open, the
    connection would outlive the thread until the collector found it: two open files each on
    SQLite, an idle server connection each on PostgreSQL."""
    try:
        return on_fresh_connection(work)
    finally:
        if not connection.in_atomic_block:
            connection.close()


async def database_call(work: Callable[[], T], *, needed_for: str) -> T:
    """`work()` on an executor thread, on a fresh connection; a 503 (database_unavailable,
    retry in a second) if the database cannot be reached, for requests that cannot be answered
    without it (`needed_for`: what it holds, for the message)."""
    try:
        return await sync_to_async(on_fresh_connection, thread_sensitive=False)(work)
    except DATABASE_UNREACHABLE as error:
        raise DatabaseUnavailable(
            f"The database cannot be reached ({error_line(error)}), and it holds {needed_for}. Try again shortly.",
            retry_after=1,
        ) from None


def error_line(error: Exception) -> str:
    """A database error in one line for the log (psycopg's run over several)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
