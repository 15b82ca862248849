"""A model's worker: the one thread that loads it, runs its jobs and unloads it.

Jobs arrive on the worker's queue from any event loop (`submit`); the thread prepares them in
arrival order, starts them in its engine as slots free up and steps the engine while any run,
handing each step's events back to the jobs' loops (see `runtime.channel`).

Its life cycle is a `WorkerState`: loading → loaded → unloading → unloaded, or failed. A worker
that fails — its load, or its engine while serving — fails every job it holds and every job
still queued with the cause, frees what it can, announces it, and tells its pool, which forgets
it: the next request loads the model afresh. No job ever waits on a dead worker: `submit` takes
jobs only while the worker is loading or loaded, under the same lock that ends that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from inference.config import ModelSettings
from inference.cpus import yield_to_the_server
from inference.runtime.catalog import ModelFile
from inference.runtime.channel import Job
from inference.runtime.engine import Engine
from inference.runtime.errors import LoadFailed, QueueFull, WorkerFailed
from inference.runtime.gguf_header import GGUFError, read_gguf_info
from inference.runtime.jobs import ModelJob
from inference.runtime.lifecycle import LifecycleEvent, LifecycleKind, LoadReason, announce
from inference.runtime.llama import LlamaLoadError, LoadProgress
from inference.runtime.runner import JobCounts, JobRunner
from inference.runtime.settings import LoadSettings

logger = logging.getLogger(__name__)

# Builds the engine of a model on its worker thread, telling the load's progress; tests pass fakes.
EngineFactory = Callable[[str, Path, LoadSettings, LoadProgress], Engine]
# What a full queue's 503 suggests: long enough for a few requests to finish.
QUEUE_FULL_RETRY_SECONDS = 5


def worker_name(model: str, embedding: bool) -> str:
    """A worker's name: its model's, or for the model's embedding context, "<model> (embeddings)"."""
    return f"{model} (embeddings)" if embedding else model


class WorkerState(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"  # asked to stop: finishing the jobs queued before that
    UNLOADED = "unloaded"
    FAILED = "failed"  # its load, or its engine, failed


class WorkerStopping(Exception):
    """The worker is unloading (or failed) and takes no new jobs."""


class WorkerListener(Protocol):
    """What a worker tells its pool, on the worker's thread."""

    def worker_loaded(self, worker: ModelWorker) -> None:
        """The worker's model is loaded."""

    def worker_idle(self, worker: ModelWorker) -> None:
        """The worker has no job running or waiting any more."""

    def worker_exited(self, worker: ModelWorker) -> None:
        """The worker's thread is ending: its model is unloaded (or never loaded)."""

    def worker_changed(self, worker: ModelWorker) -> None:
        """Its requests running or queued, its load progress or its pin changed (often: be quick)."""


@dataclass(frozen=True)
class WorkerStatus:
    """A worker as one snapshot (`inference.selectors.models` words it for /health and the pages)."""

    state: WorkerState
    in_flight: int
    slots_busy: int
    queued: int
    idle_seconds: float  # since its last request ended (0 while busy)
    expires_in: float | None  # seconds until the idle check unloads it; None: it will not
    pinned: bool
    load_percent: int | None  # while loading


class ModelWorker:
    """The thread that owns one model. Other threads may call `submit`, `stop`, `pin`, `status`,
    `idle_expiry` and read its settings; everything else is its own thread's."""

    def __init__(
        self,
        model: ModelFile,
        settings: ModelSettings,
        engine_factory: EngineFactory,
        *,
        settings_source: Callable[[], ModelSettings],
        reason: LoadReason,
        listener: WorkerListener,
        embedding: bool = False,
        max_queue: int = 0,
        memory_bytes: int = 0,
        predecessors: list[ModelWorker] | None = None,
    ) -> None:
        self.model = model
        self.name = worker_name(model.name, embedding)
        self.embedding = embedding
        self.max_queue = max_queue
        self.memory_bytes = memory_bytes  # estimated, when max_memory_mb is set
        self.settings = settings  # config.json's until the load merges in the admin's
        self.load_settings: LoadSettings | None = None
        self.load_ms: float | None = None
        self.load_percent = 0  # of the model loaded, while loading (llama.cpp tells it)
        self.state = WorkerState.LOADING
        self.loaded: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.loaded.set_running_or_notify_cancel()  # a waiter that gives up must not cancel the load
        self.counts = JobCounts()
        self._settings_source = settings_source
        self._engine_factory = engine_factory
        self._reason = reason
        self._stop_reason: LoadReason | None = None
        self._listener = listener
        self._predecessors = predecessors or []
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._runner: JobRunner | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"model:{self.name}", daemon=True)
        self._thread.start()

    # --- any thread -----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.counts.busy

    @property
    def idle_timeout(self) -> float:
        keep_alive = self.counts.keep_alive
        return self.settings.idle_timeout if keep_alive is None else keep_alive

    @property
    def idle_reason(self) -> LoadReason:
        """Why an idle unload happens: a request's keep_alive, or the model's idle_timeout."""
        return LoadReason.IDLE if self.counts.keep_alive is None else LoadReason.KEEP_ALIVE

    @property
    def usable(self) -> bool:
        """Whether a request may still be sent here (it is loading or loaded)."""
        return self.state in (WorkerState.LOADING, WorkerState.LOADED)

    def submit(self, spec: ModelJob) -> Job:
        """Queue a job (call from the event loop); its events arrive on this loop."""
        job = Job(spec, asyncio.get_running_loop())
        with self._lock:
            if not self.usable:
                raise WorkerStopping(self.name)
            if self.max_queue and self.counts.queued >= self.max_queue:
                raise QueueFull(model=self.name, waiting=self.counts.queued, retry_after=QUEUE_FULL_RETRY_SECONDS)
            self.counts.queued += 1
            self._jobs.put(job)
        self._listener.worker_changed(self)
        return job

    def stop(self, reason: LoadReason) -> bool:
        """Unload after the jobs already queued; True if there are none (it unloads at once)."""
        with self._lock:
            if self.usable:
                self._stop_reason = reason
                self.state = WorkerState.UNLOADING
                self._jobs.put(None)
            return not self.busy

    def pin(self, pinned: bool) -> None:
        """Pin or unpin the loaded model now (a pinned one is never unloaded for idleness or room)."""
        with self._lock:
            self.settings = replace(self.settings, pinned=pinned)
        self._listener.worker_changed(self)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def idle_expiry(self) -> float | None:
        """When (time.monotonic) the idle check unloads this model; None if it would not."""
        with self._lock:
            if self.state != WorkerState.LOADED or self.busy or self.settings.pinned or self.idle_timeout < 0:
                return None
            return self.counts.last_used + self.idle_timeout

    def status(self) -> WorkerStatus:
        expiry = self.idle_expiry()
        with self._lock:
            return WorkerStatus(
                state=self.state,
                in_flight=self.counts.in_flight,
                slots_busy=self.counts.slots,
                queued=self.counts.queued,
                idle_seconds=0.0 if self.busy else time.monotonic() - self.counts.last_used,
                expires_in=None if expiry is None else expiry - time.monotonic(),
                pinned=self.settings.pinned,
                load_percent=self.load_percent if self.state == WorkerState.LOADING else None,
            )

    # --- the worker's thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._live()
        finally:  # whatever happened, the pool forgets it: the next request loads afresh
            self._listener.worker_exited(self)

    def _live(self) -> None:
        yield_to_the_server()  # before llama.cpp starts its threads from this one
        for predecessor in self._predecessors:
            predecessor.join()  # its memory comes back before this load takes more
        started = time.monotonic()
        try:
            engine = self._load()
        except Exception as exc:
            self._load_failed(exc, started)
            return
        self.load_ms = round((time.monotonic() - started) * 1000, 1)
        with self._lock:
            if self.state == WorkerState.LOADING:
                self.state = WorkerState.LOADED
        self._announce(LifecycleKind.LOAD, self._reason, started)
        self.loaded.set_result(None)
        self._listener.worker_loaded(self)
        failure: Exception | None = None
        try:
            self._runner = JobRunner(
                self.name,
                engine,
                self._jobs,
                self.counts,
                self._lock,
                on_idle=lambda: self._listener.worker_idle(self),
                on_change=lambda: self._listener.worker_changed(self),
            )
            self._runner.serve()
        except Exception as exc:  # a bug or a broken model: fail what is left, unload, the next load retries
            logger.exception("%s failed while generating; unloading it", self.name)
            failure = exc
        self._unload(engine, failure)

    def _load(self) -> Engine:
        self.settings = self._settings_source()  # may read the database: not on the event loop
        model = self.model
        trained = read_gguf_info(model.path).context_length
        self.load_settings = LoadSettings.of(
            self.settings, trained_context=trained, embedding=self.embedding, projector=model.projector
        )
        logger.info("loading %s (%.0f MB, %s)", self.name, model.size_bytes / 1e6, self.load_settings.describe())
        started = time.monotonic()
        engine = self._engine_factory(self.name, model.path, self.load_settings, self._load_progressed)
        self.load_settings = replace(self.load_settings, n_ctx=engine.n_ctx)  # llama.cpp rounds up
        logger.info("loaded %s in %.2f s (%s)", self.name, time.monotonic() - started, self.load_settings.describe())
        return engine

    def _load_progressed(self, fraction: float) -> None:
        """llama.cpp's progress (called per tensor): told on at each whole percent."""
        percent = min(100, max(0, int(fraction * 100)))
        if percent != self.load_percent:
            self.load_percent = percent
            self._listener.worker_changed(self)

    def _load_failed(self, exc: Exception, started: float) -> None:
        if isinstance(exc, (GGUFError, LlamaLoadError, OSError)):
            logger.error("failed to load %s from %s: %s", self.name, self.model.path, exc)
        else:  # a bug: still fail the waiting requests rather than leave them hanging
            logger.exception("failed to load %s from %s", self.name, self.model.path)
        failure = LoadFailed(model=self.name, file=self.model.path.name, cause=str(exc) or type(exc).__name__)
        self._close_intake(WorkerState.FAILED, failure)
        self._announce(LifecycleKind.LOAD_FAILED, LoadReason.ERROR, started, error=str(exc))
        self.loaded.set_exception(failure)

    def _unload(self, engine: Engine, failure: Exception | None) -> None:
        """Free the engine. After a failure, every job it holds or that is queued fails first:
        none may wait on it from here on. (A stopped worker holds none: it served them all.)"""
        closing = time.monotonic()
        cause = "" if failure is None else str(failure) or type(failure).__name__
        if failure is not None:
            self._close_intake(WorkerState.FAILED, WorkerFailed(model=self.name, cause=cause))
        else:
            try:  # an optimisation: never in the way of the unload
                engine.keep_prompt_cache()
            except Exception:
                logger.exception("storing the prompt cache of %s failed", self.name)
        try:
            engine.close()
        except Exception:
            logger.exception("closing %s failed", self.name)
        if failure is None:
            with self._lock:
                self.state = WorkerState.UNLOADED
        reason = self._stop_reason if failure is None and self._stop_reason else LoadReason.ERROR
        logger.info("unloaded %s (%s)", self.name, reason)
        self._announce(LifecycleKind.UNLOAD, reason, closing, error=cause)

    def _close_intake(self, state: WorkerState, failure: Exception) -> None:
        """Take no more jobs; every job still held or queued gets `failure`."""
        with self._lock:
            self.state = state
            self.counts.queued = self.counts.in_flight = self.counts.slots = 0
        for job in self._held_jobs():
            job.emit(failure)

    def _held_jobs(self) -> list[Job]:
        held = self._runner.held() if self._runner else []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return held
            if job is not None:
                held.append(job)

    def _announce(self, kind: LifecycleKind, reason: LoadReason, started: float, error: str = "") -> None:
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        settings = self.load_settings.as_dict() if self.load_settings else {}
        announce(LifecycleEvent(self.name, kind, reason, duration_ms, settings, error))
