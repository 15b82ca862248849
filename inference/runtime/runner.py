"""The loop of a worker's thread: take jobs in arrival order, prepare them, start them as slots
free up, step the engine while any run, route each step's events to their jobs.

A failure that belongs to one job (its prompt cannot run, llama.cpp refuses its grammar, a bug
with that one prompt) fails that job only. Anything the engine raises while stepping leaves the
engine in an unknown state: it propagates, and the worker fails everything it holds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.runtime.channel import Job, wake
from inference.runtime.engine import Engine
from inference.runtime.errors import PrepareFailed, RuntimeFailure
from inference.runtime.jobs import Finished, Prepared, PromptAccepted

logger = logging.getLogger(__name__)


@dataclass
class JobCounts:
    """A worker's jobs waiting and running, and when the last one ended; guarded by the worker's
    lock (any thread reads them, its runner changes them)."""

    queued: int = 0
    in_flight: int = 0
    slots: int = 0  # taken by the running jobs: one per choice
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float | None = None  # the last request's; None: the model's idle_timeout

    @property
    def busy(self) -> bool:
        return bool(self.in_flight or self.queued)


class JobRunner:
    """The jobs of one worker that left its queue: prepared and waiting for slots, or running.
    Only the worker's thread touches it."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        jobs: queue.SimpleQueue[Job | None],
        counts: JobCounts,
        lock: threading.Lock,
        *,
        on_idle: Callable[[], None],
        on_change: Callable[[], None],
    ) -> None:
        self._name = name
        self._engine = engine
        self._jobs = jobs
        self._counts = counts
        self._lock = lock
        self._on_idle = on_idle  # called when the worker has nothing left to do
        self._on_change = on_change  # called when a job starts or ends (the models page shows them)
        self._waiting: deque[tuple[Job, Prepared]] = deque()
        self._running: set[Job] = set()

    def serve(self) -> None:
        """Run jobs until the worker is stopped and every job queued before the stop has ended."""
        stopping = False
        while True:
            while not stopping:  # take what has arrived; wait only when there is nothing to do
                try:
                    job = self._jobs.get(block=not self._running and not self._waiting)
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                else:
                    self._prepare(job)
            self._admit()
            if self._running:
                self._step()
            elif stopping and not self._waiting:
                return

    def held(self) -> list[Job]:
        """Every job it holds, running or waiting (for the worker to fail when it breaks)."""
        return [*self._running, *(job for job, _ in self._waiting)]

    def _prepare(self, job: Job) -> None:
        if job.cancelled:
            self._dropped()
            return
        try:
            prepared = self._engine.prepare(job.spec).within_allowance(self._engine.n_ctx)
        except Exception as exc:
            self._dropped()
            if not isinstance(exc, RuntimeFailure):  # a bug with this one prompt: the others go on
                logger.error("preparing a request for %s failed", self._name, exc_info=exc)
                exc = PrepareFailed(model=self._name, cause=f"{type(exc).__name__}: {exc}")
            job.emit(exc)
            return
        if getattr(job.spec, "count_only", False) or prepared.answer is not None:
            self._counted(job, prepared)
        else:
            self._waiting.append((job, prepared))

    def _counted(self, job: Job, prepared: Prepared) -> None:
        """A job that only asked how long its prompt is, or about the vocabulary (its answer
        prepared): answered without a slot. It used the model all the same: its keep_alive
        holds from now (Ollama's load-only requests set it this way)."""
        job.started_at = time.monotonic()
        with self._lock:
            self._counts.last_used = job.started_at
            self._counts.keep_alive = job.spec.keep_alive
        self._dropped()
        tokens = len(prepared.prompt)
        answer = () if prepared.answer is None else (prepared.answer,)
        for event in (PromptAccepted(prompt_tokens=tokens), *answer, Finished("stop", tokens, 0)):
            job.emit(event)

    def _admit(self) -> None:
        while self._waiting and self._engine.free_slots:
            job, prepared = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                self._dropped()
                continue
            try:
                accepted = self._engine.start(job, prepared, _cancelled(job))
            except RuntimeFailure as exc:  # this job cannot start (e.g. its grammar): only it fails
                self._waiting.popleft()
                self._dropped()
                job.emit(exc)
                continue
            if accepted is None:
                return  # no room in the KV cache until a running request ends
            self._waiting.popleft()
            job.started_at = time.monotonic()
            self._running.add(job)
            self._started(job)
            job.emit(accepted)

    def _step(self) -> None:
        to_wake = []
        idle = False
        for job, event in self._engine.step():
            if isinstance(event, Finished):
                job.remaining -= 1
                if not job.remaining:
                    # Counted done before its last event goes out: whoever got the complete
                    # answer also finds the model idle.
                    self._running.discard(job)
                    idle = self._done(job)
                    self._log_done(job, event)
            if job.push(event):
                to_wake.append(job)
        wake(to_wake)  # one wake-up per step, not one per token
        if idle:
            self._on_idle()

    # --- counting -------------------------------------------------------------------------------

    def _started(self, job: Job) -> None:
        with self._lock:
            self._counts.queued -= 1
            self._counts.in_flight += 1
            self._counts.slots += job.choices
        self._on_change()

    def _dropped(self) -> None:
        """A queued job ended before it started (cancelled, or refused)."""
        with self._lock:
            self._counts.queued -= 1
            idle = not self._counts.busy
        self._on_change()
        if idle:
            self._on_idle()

    def _done(self, job: Job) -> bool:
        """A running job ended, before its last event goes out; True if nothing is left to do
        (`on_idle` once its events are out)."""
        with self._lock:
            self._counts.in_flight -= 1
            self._counts.slots -= job.choices
            self._counts.last_used = time.monotonic()
            self._counts.keep_alive = job.spec.keep_alive
            idle = not self._counts.busy
        self._on_change()
        return idle

    def _log_done(self, job: Job, finished: Finished) -> None:
        elapsed = time.monotonic() - (job.started_at or job.submitted_at)
        logger.info(
            "%s on %s: %s after %d tokens (prompt %d) in %.2f s, %.1f tokens/s",
            type(job.spec).__name__.removesuffix("Job").lower(),
            self._name,
            finished.finish_reason,
            finished.completion_tokens,
            finished.prompt_tokens,
            elapsed,
            finished.completion_tokens / elapsed if elapsed else 0.0,
        )


def _cancelled(job: Job) -> Callable[[], bool]:
    """Whether `job` has been cancelled, asked by the engine at each step."""
    return lambda: job.cancelled
