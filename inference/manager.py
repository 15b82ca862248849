"""Which models are loaded, and the worker threads that own them.

A ModelWorker is a thread that owns one Engine: it loads the model, then runs jobs from its
queue one at a time, in arrival order, handing each job's events back to the asyncio loop that
submitted it. Nothing here blocks an event loop: loads and generation happen on worker threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import replace
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from inference.config import ModelManagerConfig, get_config
from inference.discovery import (
    GGUFError,
    ModelFile,
    ModelsDirectoryMissing,
    read_gguf_info,
    scan,
    strip_suffix,
)
from inference.engine import Engine, EngineLoadError, LoadSettings
from inference.errors import ApiError, GenerationFailed, InvalidRequest, ModelLoadFailed, ModelNotFound
from inference.jobs import ChatJob, Finished, JobEvent

logger = logging.getLogger(__name__)

# Builds the engine of a model on its worker thread; tests pass a fake one.
EngineFactory = Callable[[str, Path, LoadSettings], Engine]


class Job:
    """One queued generation; its events travel from the worker thread to the submitting loop."""

    def __init__(self, spec: ChatJob, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self._loop = loop
        self._events: asyncio.Queue[JobEvent | Exception] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def emit(self, event: JobEvent | Exception) -> None:
        """Called on the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the submitting loop is gone: nobody is listening any more
            self.cancel()

    async def events(self) -> AsyncIterator[JobEvent]:
        """The job's events up to Finished; leaving early (or being cancelled) stops the job."""
        try:
            while True:
                event = await self._events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self.cancel()


class ModelWorker:
    """A thread that loads one model and runs its jobs one at a time, in order."""

    def __init__(
        self, model: ModelFile, config: ModelManagerConfig, engine_factory: EngineFactory
    ) -> None:
        self.model = model
        self.state = "loading"
        self.loaded: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.loaded.set_running_or_notify_cancel()  # a waiter that gives up must not cancel the load
        self.last_used = time.monotonic()
        self._config = config
        self._engine_factory = engine_factory
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._counts_lock = threading.Lock()
        self.queued = 0
        self.in_flight = 0
        self._thread = threading.Thread(target=self._run, name=f"model:{model.name}", daemon=True)
        self._thread.start()

    def submit(self, spec: ChatJob) -> Job:
        """Queue a job (call from the event loop); its events arrive on this loop."""
        job = Job(spec, asyncio.get_running_loop())
        with self._counts_lock:
            self.queued += 1
        self._jobs.put(job)
        return job

    def stop(self) -> None:
        """Finish the queued jobs, then free the model and end the thread."""
        self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            engine = self._load()
        except Exception as exc:
            if isinstance(exc, (GGUFError, EngineLoadError, OSError)):
                logger.error("failed to load %s from %s: %s", self.model.name, self.model.path, exc)
            else:  # a bug: still fail the waiting requests rather than leave them hanging
                logger.exception("failed to load %s from %s", self.model.name, self.model.path)
            self.state = "failed"
            self.loaded.set_exception(
                ModelLoadFailed(
                    f"model {self.model.name} could not be loaded from {self.model.path.name}: {exc}"
                )
            )
            return
        self.state = "ready"
        self.loaded.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                self._execute(engine, job)
        finally:
            engine.close()
            self.state = "stopped"
            logger.info("unloaded %s", self.model.name)

    def _load(self) -> Engine:
        model = self.model
        settings = self._load_settings(read_gguf_info(model.path).context_length)
        logger.info("loading %s (%.0f MB, %s)", model.name, model.size_bytes / 1e6, settings.describe())
        started = time.monotonic()
        engine = self._engine_factory(model.name, model.path, settings)
        actual = replace(settings, n_ctx=engine.n_ctx)  # llama.cpp rounds the context up
        logger.info("loaded %s in %.2f s (%s)", model.name, time.monotonic() - started, actual.describe())
        return engine

    def _load_settings(self, trained_context: int | None) -> LoadSettings:
        n_ctx = self._config.n_ctx
        if trained_context:
            n_ctx = min(n_ctx, trained_context) if n_ctx else trained_context
        return LoadSettings(
            n_ctx=n_ctx, n_gpu_layers=self._config.n_gpu_layers, n_threads=self._config.n_threads
        )

    def _execute(self, engine: Engine, job: Job) -> None:
        with self._counts_lock:
            self.queued -= 1
            self.in_flight += 1
        started = time.monotonic()
        outcome: JobEvent | Exception | None = None
        try:
            if not job.cancelled:
                for event in engine.run_chat(job.spec, lambda: job.cancelled):
                    if isinstance(event, Finished):
                        outcome = event
                    else:
                        job.emit(event)
        except ApiError as exc:
            outcome = exc
        except Exception as exc:
            logger.exception("generation on %s failed", self.model.name)
            outcome = GenerationFailed(f"generation on {self.model.name} failed: {exc}")
        finally:
            # The worker counts as free before the last event goes out, so that whoever got the
            # complete answer also finds the model idle.
            with self._counts_lock:
                self.in_flight -= 1
                self.last_used = time.monotonic()
        if outcome is not None:
            job.emit(outcome)
        if isinstance(outcome, Finished):
            elapsed = time.monotonic() - started
            logger.info(
                "chat on %s: %s after %d tokens (prompt %d) in %.2f s, %.1f tokens/s",
                self.model.name,
                outcome.finish_reason,
                outcome.completion_tokens,
                outcome.prompt_tokens,
                elapsed,
                outcome.completion_tokens / elapsed if elapsed else 0.0,
            )

    def status(self) -> dict[str, Any]:
        with self._counts_lock:
            busy = self.in_flight or self.queued
            return {
                "state": self.state,
                "in_flight": self.in_flight,
                "queued": self.queued,
                "idle_seconds": 0.0 if busy else round(time.monotonic() - self.last_used, 1),
            }


class ModelManager:
    """The models of one server process: discovery, lazy loading, the workers."""

    def __init__(self, config: ModelManagerConfig, engine_factory: EngineFactory = Engine) -> None:
        self.config = config
        self._engine_factory = engine_factory
        self._workers: dict[str, ModelWorker] = {}
        self._lock = threading.Lock()
        self._directory_missing = False

    def available(self) -> dict[str, ModelFile]:
        """The models in the models directory now (empty, with a logged error, if it is missing)."""
        try:
            models = scan(self.config.models_directory)
        except ModelsDirectoryMissing as exc:
            if not self._directory_missing:
                logger.error("%s; no models can be served until it exists", exc)
            self._directory_missing = True
            return {}
        self._directory_missing = False
        return models

    def resolve(self, requested: str | None) -> ModelFile:
        """The model a request asks for (None: the default model); raises ModelNotFound."""
        available = self.available()
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
        if name not in available:
            raise ModelNotFound(
                f"The model '{name}' does not exist. Available models: "
                f"{', '.join(available) or 'none'}."
            )
        return available[name]

    async def acquire(self, model: ModelFile) -> ModelWorker:
        """The model's worker, loading it first if needed (concurrent callers share one load)."""
        with self._lock:
            worker = self._workers.get(model.name)
            if worker is None or worker.state == "failed":
                worker = ModelWorker(model, self.config, self._engine_factory)
                self._workers[model.name] = worker
        try:
            await asyncio.wrap_future(worker.loaded)
        except ModelLoadFailed:
            with self._lock:
                if self._workers.get(model.name) is worker:
                    del self._workers[model.name]  # the next request tries to load it again
            raise
        return worker

    def worker(self, name: str) -> ModelWorker | None:
        return self._workers.get(name)

    def loaded_models(self) -> list[str]:
        with self._lock:
            return sorted(name for name, worker in self._workers.items() if worker.state == "ready")

    def status(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            workers = sorted(self._workers.items())
        return {name: worker.status() for name, worker in workers}

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every worker after its queued jobs and free the models."""
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(timeout)


_manager: ModelManager | None = None
_manager_lock = threading.Lock()


def model_manager() -> ModelManager:
    """The process's ModelManager, created from the configuration on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = ModelManager(get_config().model_manager)
        return _manager


def replace_model_manager(manager: ModelManager | None) -> None:
    """Shut the current manager down and put `manager` (or, if None, a fresh one later) in place."""
    global _manager
    with _manager_lock:
        previous, _manager = _manager, manager
    if previous is not None:
        previous.shutdown()
