"""Which models are loaded, and the worker threads that own them.

A ModelWorker is a thread that owns one Engine: it loads the model, then runs jobs from its
queue one at a time, in arrival order, handing each job's events back to the asyncio loop that
submitted it. Nothing here blocks an event loop: loads and generation happen on worker threads.

The ModelManager decides what is loaded: lazy loads, at most `max_loaded_models` at once (the
least recently used idle model makes room), idle unloading by a reaper thread, unloads on
demand, and rediscovery on reload. Each load, failed load and unload is announced on the
`model_lifecycle` signal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from inference.config import ModelManagerConfig, ModelSettings, get_config
from inference.discovery import (
    GGUFError,
    ModelFile,
    ModelsDirectoryMissing,
    read_gguf_info,
    scan,
    strip_suffix,
)
from inference.engine import EmbeddingEngine, Engine, EngineLoadError, LoadSettings, Prepared, load_engine
from inference.errors import (
    ApiError,
    GenerationFailed,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    ModelTooLarge,
    QueueFull,
    ServiceUnavailable,
)
from inference.jobs import EmbeddingJob, Finished, GenerationJob, JobEvent, ModelJob
from inference.lifecycle import LifecycleEvent, LifecycleKind, LoadReason, model_lifecycle
from inference.memory import MIB, memory_estimate

logger = logging.getLogger(__name__)

# Builds the engine of a model on its worker thread; tests pass a fake one.
EngineFactory = Callable[[str, Path, LoadSettings], Engine | EmbeddingEngine]
# A model's settings saved outside config.json (the admin's), read on its worker thread at load.
SettingsOverrides = Callable[[str], dict[str, Any]]

ALL_MODELS = "all"
# How often a request waiting for room (every loaded model busy) looks again.
_ROOM_POLL_SECONDS = 0.05
# What a full queue's 503 suggests: long enough for a few requests to finish.
_QUEUE_FULL_RETRY_SECONDS = 5


def _context_length(configured: int, trained: int | None) -> int:
    """The configured context capped to the trained one; 0 configured means the trained one."""
    if not trained:
        return configured
    return min(configured, trained) if configured else trained


def worker_name(model: str, embedding: bool) -> str:
    """A worker's name: its model's, or for the model's embedding context, "<model> (embeddings)"."""
    return f"{model} (embeddings)" if embedding else model


class WorkerStopping(Exception):
    """The worker is being unloaded and takes no new jobs."""


class Job:
    """One queued generation; its events travel from the worker thread to the submitting loop.

    Events wait in a deque; the loop is woken once per batch of them rather than once per token,
    so a busy loop takes several tokens at a time instead of falling behind.
    """

    def __init__(self, spec: ModelJob, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self._choices = spec.n if isinstance(spec, GenerationJob) else 1
        self.remaining = self._choices  # choices still running (counted by the worker thread)
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None  # when the worker began it
        self.load_ms: float | None = None  # set if this job's request loaded the model
        self._loop = loop
        self._pending: deque[JobEvent | Exception] = deque()
        self._pending_lock = threading.Lock()
        self._wake_scheduled = False
        self._arrived = asyncio.Event()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

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
        """The job's events up to its last Finished; leaving early (or being cancelled) stops it."""
        finished = 0
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                with self._pending_lock:
                    batch = list(self._pending)
                    self._pending.clear()
                    self._wake_scheduled = False
                for event in batch:
                    if isinstance(event, Exception):
                        raise event
                    yield event
                    if isinstance(event, Finished):
                        finished += 1
                        if finished == self._choices:
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


class ModelWorker:
    """A thread that loads one model and runs its jobs one at a time, in order."""

    def __init__(
        self,
        model: ModelFile,
        settings: ModelSettings,
        engine_factory: EngineFactory,
        *,
        settings_source: Callable[[], ModelSettings],
        reason: LoadReason,
        embedding: bool = False,
        max_queue: int = 0,
        memory_bytes: int = 0,
        predecessors: list[ModelWorker],
        on_idle: Callable[[ModelWorker], None],
    ) -> None:
        self.model = model
        self.max_queue = max_queue
        self.memory_bytes = memory_bytes  # estimated, when max_memory_mb is set
        self.embedding = embedding
        self.name = worker_name(model.name, embedding)
        self.settings = settings  # config.json's until the load merges in the admin's
        self._settings_source = settings_source
        self.load_settings: LoadSettings | None = None
        self.load_ms: float | None = None
        self.state = "loading"
        self.loaded: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.loaded.set_running_or_notify_cancel()  # a waiter that gives up must not cancel the load
        self.last_used = time.monotonic()
        self.keep_alive: float | None = None  # set by the last request; None: settings.idle_timeout
        self.queued = 0
        self.in_flight = 0
        self._reason = reason
        self._predecessors = predecessors
        self._on_idle = on_idle
        self._engine_factory = engine_factory
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stop_reason: LoadReason | None = None
        # Owned by the worker thread: jobs prepared and waiting for a slot, jobs running.
        self._waiting: deque[tuple[Job, Prepared]] = deque()
        self._running: set[Job] = set()
        self._thread = threading.Thread(target=self._run, name=f"model:{self.name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return bool(self.in_flight or self.queued)

    @property
    def idle_timeout(self) -> float:
        return self.settings.idle_timeout if self.keep_alive is None else self.keep_alive

    @property
    def idle_reason(self) -> LoadReason:
        """Why an idle unload happens: a request's keep_alive, or the model's idle_timeout."""
        return LoadReason.IDLE if self.keep_alive is None else LoadReason.KEEP_ALIVE

    def submit(self, spec: ModelJob) -> Job:
        """Queue a job (call from the event loop); its events arrive on this loop."""
        job = Job(spec, asyncio.get_running_loop())
        with self._lock:
            if self._stop_reason is not None:
                raise WorkerStopping(self.name)
            if self.max_queue and self.queued >= self.max_queue:
                raise QueueFull(
                    f"{self.queued} requests are waiting for model {self.name} already; try again shortly",
                    retry_after=_QUEUE_FULL_RETRY_SECONDS,
                )
            self.queued += 1
            self._jobs.put(job)
        return job

    def stop(self, reason: LoadReason) -> bool:
        """Unload after the jobs already queued; True if there are none (it unloads at once)."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
                self._jobs.put(None)
            return not self.busy

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def idle_expiry(self) -> float | None:
        """When (time.monotonic) the idle check unloads this model; None if it would not."""
        with self._lock:
            if self.state != "loaded" or self.busy or self.settings.pinned or self.idle_timeout < 0:
                return None
            return self.last_used + self.idle_timeout

    def status(self) -> dict[str, Any]:
        expiry = self.idle_expiry()
        with self._lock:
            return {
                "state": "unloading" if self._stop_reason else self.state,
                "in_flight": self.in_flight,
                "queued": self.queued,
                "idle_seconds": 0.0 if self.busy else round(time.monotonic() - self.last_used, 1),
                "expires_at": None
                if expiry is None
                else (datetime.now(UTC) + timedelta(seconds=expiry - time.monotonic())).isoformat(),
                "pinned": self.settings.pinned,
            }

    def _run(self) -> None:
        for predecessor in self._predecessors:
            predecessor.join()  # its memory comes back before this load takes more
        started = time.monotonic()
        try:
            engine = self._load()
        except Exception as exc:
            self._fail(exc, started)
            return
        self.state = "loaded"
        self.load_ms = round((time.monotonic() - started) * 1000, 1)
        self._announce(LifecycleKind.LOAD, self._reason, started)
        self.loaded.set_result(None)
        try:
            self._serve(engine)
        except Exception:  # a bug or a broken model: fail what is left, unload, let a reload retry
            logger.exception("generation on %s failed; unloading it", self.name)
            with self._lock:
                self._stop_reason = self._stop_reason or LoadReason.ERROR
        finally:
            closing = time.monotonic()
            engine.close()
            self.state = "unloaded"
            self._fail_remaining()
            reason = self._stop_reason or LoadReason.ERROR
            logger.info("unloaded %s (%s)", self.name, reason)
            self._announce(LifecycleKind.UNLOAD, reason, closing)

    def _serve(self, engine: Engine) -> None:
        """Admit jobs into the engine's free slots in arrival order and step it while any run.

        Returns once stopped and every job queued before the stop has finished.
        """
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
                    self._prepare(engine, job)
            self._admit(engine)
            if not self._running:
                if stopping and not self._waiting:
                    return
                continue
            to_wake = []
            for job, event in engine.step():
                if isinstance(event, Finished):
                    job.remaining -= 1
                    if not job.remaining:
                        self._complete(job, event)
                if job.push(event):
                    to_wake.append(job)
            wake(to_wake)  # one wake-up per step, not one per token
            if self._unload_now():
                self._on_idle(self)

    def _prepare(self, engine: Engine, job: Job) -> None:
        try:
            if not job.cancelled:
                self._waiting.append((job, engine.prepare(job.spec)))
                return
            outcome: Exception | None = None
        except ApiError as exc:
            outcome = exc
        except Exception:  # a bug with this one prompt: fail the request, keep serving the others
            logger.exception("preparing a request for %s failed", self.name)
            outcome = GenerationFailed(f"the request could not be prepared for {self.name}")
        with self._lock:
            self.queued -= 1
        if outcome is not None:
            job.emit(outcome)

    def _admit(self, engine: Engine) -> None:
        while self._waiting and engine.free_slots:
            job, prepared = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                with self._lock:
                    self.queued -= 1
                continue
            accepted = engine.start(job, prepared, lambda job=job: job.cancelled)
            if accepted is None:
                return  # no room in the KV cache until a running request ends
            self._waiting.popleft()
            job.started_at = time.monotonic()
            self._running.add(job)
            with self._lock:
                self.queued -= 1
                self.in_flight += 1
            job.emit(accepted)

    def _complete(self, job: Job, finished: Finished) -> None:
        """Before a job's last event goes out: the worker counts it as done first, so whoever
        got the complete answer also finds the model idle."""
        self._running.discard(job)
        with self._lock:
            self.in_flight -= 1
            self.last_used = time.monotonic()
            self.keep_alive = job.spec.keep_alive
        elapsed = time.monotonic() - (job.started_at or job.submitted_at)
        logger.info(
            "%s on %s: %s after %d tokens (prompt %d) in %.2f s, %.1f tokens/s",
            type(job.spec).__name__.removesuffix("Job").lower(),
            self.name,
            finished.finish_reason,
            finished.completion_tokens,
            finished.prompt_tokens,
            elapsed,
            finished.completion_tokens / elapsed if elapsed else 0.0,
        )

    def _fail_remaining(self) -> None:
        """Jobs still running or waiting when the worker broke: they get an error, not silence."""
        failure = GenerationFailed(f"generation on {self.name} failed; the model was unloaded")
        remaining = [*self._running, *(job for job, _ in self._waiting)]
        while (job := self._jobs_nowait()) is not None:
            remaining.append(job)
        for job in remaining:
            job.emit(failure)
        with self._lock:
            self.queued = self.in_flight = 0
        self._running.clear()
        self._waiting.clear()

    def _jobs_nowait(self) -> Job | None:
        try:
            while (job := self._jobs.get_nowait()) is None:
                pass
            return job
        except queue.Empty:
            return None

    def _load(self) -> Engine:
        self.settings = self._settings_source()  # may read the database: not on the event loop
        model, settings = self.model, self.settings
        trained = read_gguf_info(model.path).context_length
        engine_keys = {option.name for option in fields(LoadSettings)}
        self.load_settings = LoadSettings(
            **{key: value for key, value in asdict(settings).items() if key in engine_keys}
            | {"n_ctx": _context_length(settings.n_ctx, trained), "embedding": self.embedding}
        )
        logger.info(
            "loading %s (%.0f MB, %s)", self.name, model.size_bytes / 1e6, self.load_settings.describe()
        )
        started = time.monotonic()
        engine = self._engine_factory(self.name, model.path, self.load_settings)
        self.load_settings = replace(self.load_settings, n_ctx=engine.n_ctx)  # llama.cpp rounds up
        logger.info(
            "loaded %s in %.2f s (%s)",
            self.name,
            time.monotonic() - started,
            self.load_settings.describe(),
        )
        return engine

    def _fail(self, exc: Exception, started: float) -> None:
        if isinstance(exc, (GGUFError, EngineLoadError, OSError)):
            logger.error("failed to load %s from %s: %s", self.name, self.model.path, exc)
        else:  # a bug: still fail the waiting requests rather than leave them hanging
            logger.exception("failed to load %s from %s", self.name, self.model.path)
        self.state = "failed"
        message = f"model {self.name} could not be loaded from {self.model.path.name}: {exc}"
        self._announce(LifecycleKind.LOAD_FAILED, LoadReason.ERROR, started, error=message)
        self.loaded.set_exception(ModelLoadFailed(message))

    def _announce(self, kind: LifecycleKind, reason: LoadReason, started: float, error: str = "") -> None:
        event = LifecycleEvent(
            model=self.name,
            kind=kind,
            reason=reason,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            settings=asdict(self.load_settings) if self.load_settings else {},
            error=error,
        )
        for receiver, result in model_lifecycle.send_robust(sender=ModelWorker, event=event):
            if isinstance(result, Exception):
                logger.error("recording the %s of %s failed: %s", kind, self.name, result)

    def _unload_now(self) -> bool:
        """Idle with a timeout of 0 (idle_timeout or the last request's keep_alive)."""
        with self._lock:
            return (
                not self.busy
                and self._stop_reason is None
                and self.idle_timeout == 0
                and not self.settings.pinned
            )

@dataclass(frozen=True)
class ModelChanges:
    """What a reload found: models added, removed, and changed (file or settings)."""

    added: list[str]
    removed: list[str]
    changed: list[str]


class ModelManager:
    """The models of one server process: discovery, lazy loading, eviction, unloading."""

    def __init__(
        self,
        config: ModelManagerConfig,
        engine_factory: EngineFactory = load_engine,
        settings_overrides: SettingsOverrides = lambda name: {},
    ) -> None:
        self.config = config
        self.settings_overrides = settings_overrides
        self._engine_factory = engine_factory
        self._workers: dict[str, ModelWorker] = {}
        self._retired: list[ModelWorker] = []  # unloading: finishing their last jobs
        self._lock = threading.Lock()
        self._directory_missing = False
        self._scanned: tuple[tuple[int, int], dict[str, ModelFile]] | None = None
        self._shutting_down = False
        self._known = self.available()
        self._reaper_stop = threading.Event()

    def available(self) -> dict[str, ModelFile]:
        """The models in the models directory now (empty, with a logged error, if it is missing).

        The directory is scanned again only when it changed (files added, removed, renamed): a
        request then costs one stat, not one per model file.
        """
        directory = self.config.models_directory
        try:
            stat = directory.stat()
            version = (stat.st_ino, stat.st_mtime_ns)
            scanned = self._scanned
            if scanned is None or scanned[0] != version:
                scanned = self._scanned = (version, scan(directory))
            missing = False
        except (ModelsDirectoryMissing, FileNotFoundError, NotADirectoryError):
            self._scanned, scanned, missing = None, None, True
        with self._lock:  # requests and the reaper notice at once: log the change once
            changed, self._directory_missing = missing != self._directory_missing, missing
        if changed and missing:
            logger.error("models directory %s does not exist; no models can be served until it does", directory)
        elif changed:
            logger.info("models directory %s is back", directory)
        return scanned[1] if scanned else {}

    def resolve(self, requested: str | None, allowed: list[str] | None = None) -> ModelFile:
        """The model a request asks for (None: the default model), by its name or an alias;
        raises ModelNotFound.

        With `allowed` (an API key's models) the others do not exist, for that key.
        """
        available = self.available()
        if allowed:
            available = {name: model for name, model in available.items() if name in allowed}
        if requested:
            name = strip_suffix(requested)
        elif self.config.default_model:
            name = strip_suffix(self.config.default_model)
        elif len(available) == 1:
            name = next(iter(available))
        else:
            raise InvalidRequest(
                "no model given and no default_model configured; available models: "
                f"{', '.join(available) or 'none'}",
                param="model",
            )
        what = f"'{name}'"
        if name not in available and name in self.config.aliases:  # a model file of that name wins
            name = strip_suffix(self.config.aliases[name])
            what = f"'{name}' (which the alias {what} names)"
        if name not in available:
            if self._directory_missing:
                raise ModelNotFound(
                    f"The model {what} does not exist: the models directory "
                    f"{self.config.models_directory} does not exist."
                )
            raise ModelNotFound(
                f"The model {what} does not exist. Available models: {', '.join(available) or 'none'}."
            )
        return available[name]

    async def submit(self, model: ModelFile, spec: ModelJob) -> Job:
        """Queue a job on the model, loading it first if needed (then the job has its load_ms).

        Embedding jobs go to the model's embedding context, a worker of its own.
        """
        embedding = isinstance(spec, EmbeddingJob)
        while True:
            worker, loaded_now = await self._acquire(model, LoadReason.FIRST_REQUEST, embedding)
            try:
                job = worker.submit(spec)
            except WorkerStopping:
                continue  # unloaded between its load and this job: load it again
            job.load_ms = worker.load_ms if loaded_now else None
            return job

    async def acquire(self, model: ModelFile, reason: LoadReason, embedding: bool = False) -> ModelWorker:
        """The model's worker, loading it first if needed (concurrent callers share one load).

        With `max_loaded_models` loaded, the least recently used idle model is unloaded to make
        room; if every loaded model is busy, this waits until one is idle.
        """
        return (await self._acquire(model, reason, embedding))[0]

    async def _acquire(
        self, model: ModelFile, reason: LoadReason, embedding: bool
    ) -> tuple[ModelWorker, bool]:
        """The worker, and whether this call started its load."""
        needed = await self._memory_needed(model, embedding)
        while (found := self._worker_or_room(model, reason, embedding, needed)) is None:
            await asyncio.sleep(_ROOM_POLL_SECONDS)
        worker, created = found
        try:
            await asyncio.wrap_future(worker.loaded)
        except ModelLoadFailed:
            with self._lock:
                if self._workers.get(worker.name) is worker:
                    del self._workers[worker.name]  # the next request tries to load it again
            raise
        return worker, created

    async def _memory_needed(self, model: ModelFile, embedding: bool) -> int:
        """The estimated bytes of loading the model when max_memory_mb limits loads (else 0).

        Raises ModelTooLarge for a model that could never fit.
        """
        limit = self.config.max_memory_mb * MIB
        worker = self._workers.get(worker_name(model.name, embedding))
        if not limit or (worker is not None and worker.state != "failed"):
            return 0
        # The header and the admin's settings are read off the event loop.
        return await asyncio.to_thread(self._memory_estimate_checked, model, limit)

    def _memory_estimate_checked(self, model: ModelFile, limit: int) -> int:
        settings = self.config.settings_for(model.name, self.settings_overrides(model.name))
        try:
            info = read_gguf_info(model.path)
        except GGUFError:
            return 0  # the load fails, saying why
        estimate = memory_estimate(
            info,
            file_bytes=model.size_bytes,
            n_ctx=_context_length(settings.n_ctx, info.context_length),
            n_batch=settings.n_batch,
        )
        if estimate.total > limit:
            raise ModelTooLarge(
                f"model {model.name} is not loaded: it would need {estimate.describe()}; "
                f"max_memory_mb is {limit // MIB}. Lower its n_ctx or raise max_memory_mb."
            )
        return estimate.total

    def _worker_or_room(
        self, model: ModelFile, reason: LoadReason, embedding: bool, needed: int
    ) -> tuple[ModelWorker, bool] | None:
        with self._lock:
            if self._shutting_down:
                raise ServiceUnavailable("the server is shutting down", param=None)
            name = worker_name(model.name, embedding)
            worker = self._workers.get(name)
            if worker is not None and worker.state != "failed":
                return worker, False
            evicted = self._make_room_locked(model.name, needed)
            if evicted is None:
                return None
            config = self.config
            # A load waits for the unloads it replaces; under a memory limit, for every unload.
            unloading = [old for old in self._retired if old.is_alive() and (needed or old.name == name)]
            worker = ModelWorker(
                model,
                config.settings_for(model.name),
                self._engine_factory,
                settings_source=lambda: config.settings_for(model.name, self.settings_overrides(model.name)),
                reason=reason,
                embedding=embedding,
                max_queue=config.max_queue,
                memory_bytes=needed,
                predecessors=evicted + unloading,
                on_idle=self._unload_idle_worker,
            )
            self._workers[name] = worker
            return worker, True

    def _make_room_locked(self, name: str, needed: int) -> list[ModelWorker] | None:
        """Unload least recently used idle models until there is room for one more (by count,
        and by `needed` bytes under max_memory_mb): the workers unloaded, or None to wait."""
        live = [worker for worker in self._workers.values() if worker.state != "failed"]
        limit = self.config.max_memory_mb * MIB
        pinned = [worker for worker in live if worker.settings.pinned]
        if needed and sum(worker.memory_bytes for worker in pinned) + needed > limit:
            raise ModelTooLarge(
                f"model {name} is not loaded: it would need about {needed // MIB} MB, which does not "
                f"fit in max_memory_mb ({limit // MIB}) beside the pinned models"
            )
        evicted: list[ModelWorker] = []
        while len(live) >= self.config.max_loaded_models or (
            needed and sum(worker.memory_bytes for worker in live) + needed > limit
        ):
            idle = [w for w in live if w.state == "loaded" and not w.busy and not w.settings.pinned]
            if not idle:
                if len(pinned) == len(live):
                    raise ServiceUnavailable(
                        f"cannot load another model: all {len(live)} loaded models (max_loaded_models) "
                        "are pinned",
                        param="model",
                    )
                return None
            victim = min(idle, key=lambda worker: worker.last_used)
            logger.info("unloading %s, the least recently used model, to make room", victim.name)
            self._retire_locked(victim, LoadReason.LRU)
            live.remove(victim)
            evicted.append(victim)
        return evicted

    def _retire_locked(self, worker: ModelWorker, reason: LoadReason) -> bool:
        del self._workers[worker.name]
        self._retired = [old for old in self._retired if old.is_alive()] + [worker]
        return worker.stop(reason)

    def _retire_missing_locked(self, available: dict[str, ModelFile], reason: LoadReason) -> list[ModelWorker]:
        """Unload the models whose file is no longer there (after their running requests)."""
        missing = [worker for worker in self._workers.values() if worker.model.name not in available]
        for worker in missing:
            self._retire_locked(worker, reason)
        return missing

    def _unload_idle_worker(self, worker: ModelWorker) -> None:
        """Called on a worker's thread when it went idle with a timeout of 0."""
        with self._lock:
            if self._workers.get(worker.name) is worker:
                self._retire_locked(worker, worker.idle_reason)

    def unload(self, name: str, reason: LoadReason) -> tuple[list[ModelWorker], list[ModelWorker]]:
        """Unload a model, or every model for "all".

        Returns (idle workers, which unload now; busy ones, which unload when their running
        requests end). Raises ModelNotFound for a name that is neither loaded nor on disk.
        """
        if name == ALL_MODELS:
            if ALL_MODELS in self._known:
                logger.warning("'all' means every loaded model; all.gguf cannot be unloaded alone")
        else:
            name = strip_suffix(name)
            if name not in self._workers and name not in self.available():
                raise ModelNotFound(f"The model '{name}' does not exist.")
        now, pending = [], []
        with self._lock:
            targets = list(self._workers.values()) if name == ALL_MODELS else [
                worker for worker in self._workers.values() if worker.model.name == name
            ]
            for worker in targets:
                (now if self._retire_locked(worker, reason) else pending).append(worker)
        return now, pending

    def reap(self) -> list[ModelWorker]:
        """Unload every model idle for longer than its idle timeout (or keep_alive), and every
        model whose file is gone (its running requests finish first)."""
        now = time.monotonic()
        available = self.available()
        with self._lock:
            removed = self._retire_missing_locked(available, LoadReason.FILE_REMOVED)
            expired = [
                worker
                for worker in self._workers.values()
                if (expiry := worker.idle_expiry()) is not None and now > expiry
            ]
            for worker in expired:
                self._retire_locked(worker, worker.idle_reason)
        for worker in removed:
            logger.warning("the file of %s is gone: unloading it", worker.name)
        for worker in expired:
            logger.info("%s was idle for %.0f s: unloading", worker.name, now - worker.last_used)
        return removed + expired

    def start_reaper(self) -> None:
        """Run the idle check every check_interval seconds on a thread of its own."""

        def run() -> None:
            while not self._reaper_stop.wait(self.config.check_interval):
                self.reap()

        threading.Thread(target=run, name="reaper", daemon=True).start()

    def reload(self, config: ModelManagerConfig) -> tuple[ModelChanges, list[ModelWorker]]:
        """Put new settings in force (for later loads) and rediscover the models.

        Loaded models whose file is gone are unloaded; returns the changes and those workers.
        """
        previous_config, previous = self.config, self._known
        self.config = config
        known = self.available()
        changes = ModelChanges(
            added=sorted(known.keys() - previous.keys()),
            removed=sorted(previous.keys() - known.keys()),
            changed=sorted(
                name
                for name in known.keys() & previous.keys()
                if (known[name].size_bytes, known[name].modified)
                != (previous[name].size_bytes, previous[name].modified)
                or config.settings_for(name) != previous_config.settings_for(name)
            ),
        )
        with self._lock:
            self._known = known
            gone = self._retire_missing_locked(known, LoadReason.RELOAD)
        return changes, gone

    def worker(self, name: str) -> ModelWorker | None:
        return self._workers.get(name)

    def loaded_models(self) -> list[str]:
        with self._lock:
            return sorted(name for name, worker in self._workers.items() if worker.state == "loaded")

    def status(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            workers = [old for old in self._retired if old.is_alive()] + list(self._workers.values())
        return {worker.name: worker.status() for worker in workers}

    def busy(self) -> bool:
        """Whether any request is running or queued, on a loaded or an unloading model."""
        return any(status["in_flight"] or status["queued"] for status in self.status().values())

    def stop_accepting(self) -> None:
        """New requests get a 503 from now on (graceful shutdown)."""
        with self._lock:
            self._shutting_down = True

    def shutdown(self, reason: LoadReason = LoadReason.SHUTDOWN, timeout: float = 10.0) -> None:
        """Stop the reaper, unload every model after its queued jobs, wait for them."""
        self._reaper_stop.set()
        with self._lock:
            self._shutting_down = True
            for worker in list(self._workers.values()):
                self._retire_locked(worker, reason)
            retired = list(self._retired)
        for worker in retired:
            worker.join(timeout)


_manager: ModelManager | None = None
_manager_lock = threading.Lock()
_settings_overrides: SettingsOverrides = lambda name: {}


def register_settings_overrides(source: SettingsOverrides) -> None:
    """Where the process's manager finds per-model settings saved outside config.json."""
    global _settings_overrides
    _settings_overrides = source


def model_manager() -> ModelManager:
    """The process's ModelManager, created from the configuration on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = ModelManager(get_config().model_manager, settings_overrides=_settings_overrides)
            _manager.start_reaper()
        return _manager


def replace_model_manager(manager: ModelManager | None) -> None:
    """Shut the current manager down and put `manager` (or, if None, a fresh one later) in place."""
    global _manager
    with _manager_lock:
        previous, _manager = _manager, manager
    if previous is not None:
        previous.shutdown()
