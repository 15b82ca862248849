"""The records thread: the one thread that writes the server's records (requests with their daily
totals, load events), one at a time, in the order they come.

While the database cannot be reached, records wait in memory, in order: at most
`records.pending_limit` of them (when full, the oldest unwritten one is dropped and counted).
The thread tries the database again every RETRY_SECONDS and, when it answers, writes them, then
the records that came meanwhile. The outage is logged once when it begins ("… N records
waiting") and once when it ends ("database is back: wrote N records"). What waits is lost if the
process is killed; a graceful stop tries once more and logs what it could not write.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from inference.config import get_config
from inference.connections import DATABASE_UNREACHABLE, error_line, on_fresh_connection

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS = 1.0
# Waiting records written per turn once the database is back; records submitted meanwhile queue
# behind the rest rather than wait for all of them.
FLUSH_BATCH = 100


@dataclass(frozen=True)
class _Record:
    write: Callable[[], Any]
    label: str  # in logs: "request chatcmpl-… on MODEL", "load of MODEL"


class RecordWriter:
    """Writes records on its own thread, in order, keeping them while the database is away.

    `submit` and `waiting` may be called from any thread, `close` by the thread that stops the
    server; the waiting records and the outage's counts belong to the records thread.
    """

    def __init__(self, *, pending_limit: Callable[[], int], retry_seconds: float = RETRY_SECONDS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")
        self._pending_limit = pending_limit  # read at each use: a config reload applies
        self._retry_seconds = retry_seconds
        self._pending: deque[_Record] = deque()
        self._flush_scheduled = False
        self._written_late = 0
        self._dropped = 0

    def submit(self, write: Callable[[], T], *, label: str) -> Future[T | None]:
        """Have `write` run on the records thread, on a fresh connection, retried once if the
        database fails. The future's result is what `write` returned, or None if the database
        cannot be reached and the record waits to be written later; its exception is the error
        of a write that cannot succeed (a constraint, bad data: not retried, not kept)."""
        future: Future[T | None] = Future()
        self._executor.submit(self._take, _Record(write, label), future)
        return future

    @property
    def waiting(self) -> int:
        """How many records wait for the database (a snapshot)."""
        return len(self._pending)

    def close(self) -> None:
        """Write what waits if the database answers now, say what is lost, stop the thread."""
        self._executor.submit(self._flush, None).result()
        if self._pending:
            logger.error("stopping with %d records not written: the database cannot be reached", len(self._pending))
        self._executor.shutdown()

    # Everything below runs on the records thread.

    def _take(self, record: _Record, future: Future[Any]) -> None:
        # Records wait only while the database is away (the limit is at least 1): this one goes
        # behind them, in order, and the retry writes it.
        if self._pending:
            self._keep(record)
            future.set_result(None)
            return
        try:
            result = on_fresh_connection(record.write)
        except DATABASE_UNREACHABLE as error:
            self._keep(record)
            logger.warning(
                "database unreachable (%s): records wait in memory until it is back (%d records "
                "waiting, at most %d: records.pending_limit)",
                error_line(error),
                len(self._pending),
                self._pending_limit(),
            )
            self._flush_later()
            future.set_result(None)
        except Exception as error:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _keep(self, record: _Record) -> None:
        self._pending.append(record)
        limit = self._pending_limit()
        while len(self._pending) > limit:
            dropped = self._pending.popleft()
            if not self._dropped:
                logger.error(
                    "%d records wait for the database (records.pending_limit): dropping the oldest "
                    "unwritten ones (the first: %s)",
                    limit,
                    dropped.label,
                )
            self._dropped += 1

    def _flush_later(self) -> None:
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        timer = threading.Timer(self._retry_seconds, self._submit_flush)
        timer.daemon = True
        timer.start()

    def _submit_flush(self) -> None:  # on the timer's thread
        try:
            self._executor.submit(self._flush, FLUSH_BATCH)
        except RuntimeError:  # shut down: the process is stopping, and close() said what was lost
            pass

    def _flush(self, batch: int | None) -> None:
        """Write waiting records, oldest first: `batch` of them (None: all) before the records
        submitted meanwhile get their turn; if the database fails, try again later."""
        self._flush_scheduled = False
        done = 0
        while self._pending and (batch is None or done < batch):
            record = self._pending[0]
            try:
                on_fresh_connection(record.write)
                self._written_late += 1
            except DATABASE_UNREACHABLE:
                self._flush_later()
                return
            except Exception as error:  # this record cannot be written; the next ones can
                logger.error("could not write %s, kept while the database was away: %s", record.label, error)
            self._pending.popleft()
            done += 1
        if self._pending:
            self._flush_scheduled = True
            self._executor.submit(self._flush, batch)
        elif done:
            dropped = f" ({self._dropped} dropped: records.pending_limit)" if self._dropped else ""
            logger.info("database is back: wrote %d records%s", self._written_late, dropped)
            self._written_late = self._dropped = 0


# The process's records thread; it starts with the first record.
writer = RecordWriter(pending_limit=lambda: get_config().records.pending_limit)
