"""A queued job and the channel its events travel on, from a worker thread to the event loop.

Events wait in a deque; the loop is woken once per batch of them rather than once per token, so a
busy loop takes several tokens at a time instead of falling behind. `waiting` says whether more
events are already here, so that a stream can send them in one write. A consumer that stops
listening (a client hung up, its task was cancelled) cancels the job: the worker drops it if it
has not started, and its scheduler frees its slots at the next step if it has.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator

from inference.runtime.jobs import Finished, GenerationJob, JobEvent, ModelJob


class Job:
    """One queued job: its spec, its timings, its events."""

    def __init__(self, spec: ModelJob, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.choices = spec.n if isinstance(spec, GenerationJob) else 1
        self.remaining = self.choices  # choices still running (counted by the worker thread)
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None  # when the worker began it
        self.load_ms: float | None = None  # set if this job's request loaded the model
        self._loop = loop
        self._pending: deque[JobEvent | Exception] = deque()
        self._taken = 0  # events taken from _pending and not yet handed on
        self._pending_lock = threading.Lock()
        self._wake_scheduled = False
        self._arrived = asyncio.Event()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def waiting(self) -> bool:
        """Whether the consumer's next event is already here (it would come without waiting)."""
        return self._taken > 0 or bool(self._pending)

    def push(self, event: JobEvent | Exception) -> bool:
        """Queue an event (worker thread); True if its loop must be woken for it."""
        with self._pending_lock:
            self._pending.append(event)
            if self._wake_scheduled:
                return False
            self._wake_scheduled = True
            return True

    def emit(self, event: JobEvent | Exception) -> None:
        """Queue an event and wake its loop (worker thread)."""
        if self.push(event):
            wake([self])

    async def events(self) -> AsyncIterator[JobEvent]:
        """The job's events up to its last Finished (an exception event is raised); leaving
        early, or being cancelled, cancels the job."""
        finished = 0
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                with self._pending_lock:
                    batch = list(self._pending)
                    self._pending.clear()
                    self._wake_scheduled = False
                for taken, event in enumerate(batch):
                    self._taken = len(batch) - taken - 1
                    if isinstance(event, Exception):
                        raise event
                    yield event
                    if isinstance(event, Finished):
                        finished += 1
                        if finished == self.choices:
                            return
        finally:
            self.cancel()


def wake(jobs: list[Job]) -> None:
    """Wake the loops of jobs with new events: one wake-up per loop, however many jobs."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    for job in jobs:
        by_loop.setdefault(job._loop, []).append(job)
    for loop, waiting in by_loop.items():
        try:
            loop.call_soon_threadsafe(_arrived, waiting)
        except RuntimeError:  # the submitting loop is gone: nobody is listening any more
            for job in waiting:
                job.cancel()


def _arrived(jobs: list[Job]) -> None:
    for job in jobs:
        job._arrived.set()
