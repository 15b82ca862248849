"""Which models are loaded, within `max_loaded_models` and `max_memory_mb`.

The ModelPool loads a model when a request first asks for it (concurrent requests share one
load), makes room by unloading the least recently used idle model, and unloads models that are
idle too long (`reap`, every check_interval on a reaper thread), asked for (`unload`), or whose
file is gone. Its workers are kept in a WorkerRegistry, under the registry's lock; a request
that must wait for room (every loaded model busy) waits for the registry's next change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from inference.config import ModelManagerConfig, ModelSettings, get_config
from inference.runtime.catalog import Catalog, ModelChanges, ModelFile, strip_suffix
from inference.runtime.channel import Job
from inference.runtime.engine import load_engine
from inference.runtime.errors import AllPinned, ModelTooLarge, ShuttingDown
from inference.runtime.jobs import ModelJob
from inference.runtime.lifecycle import LoadReason
from inference.runtime.memory import MIB, memory_needed
from inference.runtime.reaper import Reaper
from inference.runtime.registry import WorkerRegistry
from inference.runtime.watchers import ChangeWatchers
from inference.runtime.worker import EngineFactory, ModelWorker, WorkerState, WorkerStatus, WorkerStopping, worker_name

logger = logging.getLogger(__name__)

# A model's settings saved outside config.json (the admin's), read on its worker thread at load.
SettingsOverrides = Callable[[str], dict[str, Any]]

ALL_MODELS = "all"


def no_overrides(name: str) -> dict[str, Any]:
    """No settings saved outside config.json."""
    return {}


class ModelPool:
    """The loaded models of one server process, and the catalog they come from."""

    def __init__(
        self,
        config: ModelManagerConfig,
        engine_factory: EngineFactory = load_engine,
        settings_overrides: SettingsOverrides = no_overrides,
    ) -> None:
        self.catalog = Catalog(config)
        self.settings_overrides = settings_overrides
        self._engine_factory = engine_factory
        self.watchers = ChangeWatchers()  # told of every change the models page shows
        self._registry = WorkerRegistry(self.watchers.notify)
        self._shutting_down = False
        self.reaper = Reaper(self.catalog, self._registry)

    @property
    def config(self) -> ModelManagerConfig:
        return self.catalog.config

    # --- requests -------------------------------------------------------------------------------

    async def submit(self, model: ModelFile, spec: ModelJob) -> Job:
        """Queue a job on the model, loading it first if needed (then the job has its load_ms).

        Embedding jobs (and a reranker's) go to the model's embedding context, a worker of its own.
        """
        embedding = spec.on_embedding_context
        while True:
            worker, loaded_now = await self._acquire(model, LoadReason.FIRST_REQUEST, embedding)
            try:
                job = worker.submit(spec)
            except WorkerStopping:
                continue  # unloaded (or broke) between its load and this job: load it again
            job.load_ms = worker.load_ms if loaded_now else None
            return job

    async def acquire(self, model: ModelFile, reason: LoadReason, embedding: bool = False) -> ModelWorker:
        """The model's worker, loading it first if needed (concurrent callers share one load).

        With `max_loaded_models` loaded, the least recently used idle model is unloaded to make
        room; if every loaded model is busy, this waits until one is idle.
        """
        return (await self._acquire(model, reason, embedding))[0]

    async def _acquire(self, model: ModelFile, reason: LoadReason, embedding: bool) -> tuple[ModelWorker, bool]:
        """The worker, and whether this call started its load."""
        needed = await self._memory_needed(model, embedding)
        while True:
            with self._registry.lock:
                found = self._worker_or_room_locked(model, reason, embedding, needed)
                if found is not None:
                    break
                changed = self._registry.change_locked()
            await changed
        worker, created = found
        await asyncio.wrap_future(worker.loaded)  # raises LoadFailed; the worker is gone then
        return worker, created

    async def _memory_needed(self, model: ModelFile, embedding: bool) -> int:
        """The estimated bytes of loading the model when max_memory_mb limits loads (else 0)."""
        limit = self.config.max_memory_mb * MIB
        worker = self._registry.get(worker_name(model.name, embedding))
        if not limit or (worker is not None and worker.usable):
            return 0
        # The header and the admin's settings are read off the event loop.
        return await asyncio.to_thread(lambda: memory_needed(model, self._settings_for(model.name), limit))

    def _settings_for(self, name: str) -> ModelSettings:
        """A model's settings: config.json's, then the admin's (may read the database)."""
        return self.config.settings_for(name, self.settings_overrides(name))

    def _worker_or_room_locked(
        self, model: ModelFile, reason: LoadReason, embedding: bool, needed: int
    ) -> tuple[ModelWorker, bool] | None:
        """The model's worker, a new one if there is room for it, or None to wait."""
        if self._shutting_down:
            raise ShuttingDown()
        name = worker_name(model.name, embedding)
        current = self._registry.get(name)
        if current is not None and current.usable:
            return current, False
        evicted = self._make_room_locked(model.name, needed)
        if evicted is None:
            return None
        config = self.config
        # A load waits for the unloads it replaces; under a memory limit, for every unload.
        unloading = [old for old in self._registry.unloading_locked() if needed or old.name == name]
        broken = [current] if current is not None else []  # failed: its thread may still be freeing it
        worker = ModelWorker(
            model,
            config.settings_for(model.name),
            self._engine_factory,
            settings_source=lambda: self._settings_for(model.name),
            reason=reason,
            listener=self._registry,
            embedding=embedding,
            max_queue=config.max_queue,
            memory_bytes=needed,
            predecessors=evicted + unloading + broken,
        )
        self._registry.register_locked(worker)
        return worker, True

    def _make_room_locked(self, name: str, needed: int) -> list[ModelWorker] | None:
        """Unload least recently used idle models until there is room for one more (by count,
        and by `needed` bytes under max_memory_mb): the workers unloaded, or None to wait."""
        live = self._registry.live_locked()
        limit = self.config.max_memory_mb * MIB
        pinned = [worker for worker in live if worker.settings.pinned]
        pinned_bytes = sum(worker.memory_bytes for worker in pinned)
        if needed and pinned_bytes + needed > limit:
            raise ModelTooLarge(
                model=name,
                estimate=f"about {needed // MIB} MB",
                needed_mb=needed // MIB,
                limit_mb=limit // MIB,
                pinned_mb=pinned_bytes // MIB,
            )
        evicted: list[ModelWorker] = []
        while self._full(live, needed):
            idle = [w for w in live if w.state == WorkerState.LOADED and not w.busy and not w.settings.pinned]
            if not idle:
                if len(pinned) == len(live):
                    raise AllPinned(loaded=len(live))
                return None
            victim = min(idle, key=lambda worker: worker.counts.last_used)
            logger.info("unloading %s, the least recently used model, to make room", victim.name)
            self._registry.retire_locked(victim, LoadReason.LRU)
            live.remove(victim)
            evicted.append(victim)
        return evicted

    # --- unloading ------------------------------------------------------------------------------

    def unload(self, name: str, reason: LoadReason) -> tuple[list[ModelWorker], list[ModelWorker]]:
        """Unload a model, or every model for "all".

        Returns (idle workers, which unload now; busy ones, which unload when their running
        requests end). Raises ModelNotFound for a name that is neither loaded nor on disk.
        """
        if name == ALL_MODELS:
            if ALL_MODELS in self.catalog.known:
                logger.warning("'all' means every loaded model; all.gguf cannot be unloaded alone")
        else:
            name = strip_suffix(name)
            available = self.catalog.available()
            if self._registry.get(name) is None and name not in available:
                raise self.catalog.not_found(name, available)
        now: list[ModelWorker] = []
        pending: list[ModelWorker] = []
        with self._registry.lock:
            targets = [
                worker
                for worker in self._registry.registered_locked()
                if name == ALL_MODELS or worker.model.name == name
            ]
            for worker in targets:
                (now if self._registry.retire_locked(worker, reason) else pending).append(worker)
        return now, pending

    def pin(self, name: str, pinned: bool) -> None:
        """Pin or unpin a model's loaded workers now (its saved setting is the caller's)."""
        with self._registry.lock:
            workers = [worker for worker in self._registry.registered_locked() if worker.model.name == name]
        for worker in workers:
            worker.pin(pinned)

    def reload(self, config: ModelManagerConfig) -> tuple[ModelChanges, list[ModelWorker]]:
        """Put new settings in force (for later loads) and rediscover the models.

        Loaded models whose file is gone are unloaded; returns the changes and those workers.
        """
        changes = self.catalog.reload(config)
        with self._registry.lock:
            gone = self._registry.retire_missing_locked(self.catalog.known, LoadReason.RELOAD)
        return changes, gone

    # --- reading --------------------------------------------------------------------------------

    def worker(self, name: str) -> ModelWorker | None:
        return self._registry.get(name)

    def workers(self) -> list[ModelWorker]:
        """Every worker: loading, loaded, and unloading."""
        with self._registry.lock:
            return self._registry.unloading_locked() + self._registry.registered_locked()

    def loaded_models(self) -> list[str]:
        return self._registry.loaded_models()

    def status(self) -> dict[str, WorkerStatus]:
        return self._registry.status()

    def has_room(self, needed: int) -> bool:
        """Whether one more model (of `needed` estimated bytes) fits now without unloading one."""
        with self._registry.lock:
            return not self._full(self._registry.live_locked(), needed)

    def _full(self, live: list[ModelWorker], needed: int) -> bool:
        """Whether one more model, of `needed` estimated bytes (0: not counted), would not fit
        beside `live` (by max_loaded_models, and by max_memory_mb)."""
        used = sum(worker.memory_bytes for worker in live)
        return len(live) >= self.config.max_loaded_models or bool(
            needed and used + needed > self.config.max_memory_mb * MIB
        )

    def busy(self) -> bool:
        """Whether any request is running or queued, on a loaded or an unloading model."""
        return any(status.in_flight or status.queued for status in self.status().values())

    # --- shutting down --------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """New requests get a 503 from now on (graceful shutdown)."""
        with self._registry.lock:
            self._shutting_down = True

    def shutdown(self, reason: LoadReason = LoadReason.SHUTDOWN, timeout: float = 10.0) -> None:
        """Stop the reaper, unload every model after its queued jobs, wait for them."""
        self.reaper.stop()
        with self._registry.lock:
            self._shutting_down = True
            for worker in self._registry.registered_locked():
                self._registry.retire_locked(worker, reason)
            retired = self._registry.unloading_locked()
        for worker in retired:
            worker.join(timeout)


_pool: ModelPool | None = None
_pool_lock = threading.Lock()
_settings_overrides: SettingsOverrides = no_overrides


def register_settings_overrides(source: SettingsOverrides) -> None:
    """Where the process's pool finds per-model settings saved outside config.json."""
    global _settings_overrides
    _settings_overrides = source


def model_pool() -> ModelPool:
    """The process's ModelPool, created from the configuration on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ModelPool(get_config().model_manager, settings_overrides=_settings_overrides)
            _pool.reaper.start()
        return _pool


def replace_model_pool(pool: ModelPool | None) -> None:
    """Shut the current pool down and put `pool` (or, if None, a fresh one later) in place."""
    global _pool
    with _pool_lock:
        previous, _pool = _pool, pool
    if previous is not None:
        previous.shutdown()
