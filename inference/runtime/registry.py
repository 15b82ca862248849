"""The workers of a model pool: those registered (loading or serving their model) and those
retired (unloading: finishing their last jobs). One lock guards both; the pool takes it to
decide, and calls the `_locked` methods while it holds it.

Workers report here on their own threads (this is their WorkerListener): one that exits —
unloaded, or failed — is forgotten at once, so the next request for its model loads it afresh;
one that goes idle with an idle timeout of 0 is retired. Every report wakes the requests that
wait for room: they wait for a change, never poll. Every change is also told to `on_change`
(the pool's watchers: the dashboard's models page).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from inference.runtime.catalog import ModelFile
from inference.runtime.lifecycle import LoadReason
from inference.runtime.worker import ModelWorker, WorkerState, WorkerStatus


class _Waiters:
    """Tasks of any event loop waiting for the registry to change; woken from any thread."""

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    def add(self) -> asyncio.Future[None]:
        """A future of the running loop, done at the next `wake_all`."""
        future = asyncio.get_running_loop().create_future()
        self._futures.append(future)
        return future

    def wake_all(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            try:
                future.get_loop().call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # its loop is closed: nobody waits any more
                pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class WorkerRegistry:
    """Registered and retired workers, by name; the lock that guards them."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.lock = threading.Lock()
        self._workers: dict[str, ModelWorker] = {}
        self._retired: list[ModelWorker] = []
        self._waiters = _Waiters()
        self._on_change = on_change  # quick, and never takes this lock

    def get(self, name: str) -> ModelWorker | None:
        return self._workers.get(name)

    # --- under the lock -------------------------------------------------------------------------

    def registered_locked(self) -> list[ModelWorker]:
        return list(self._workers.values())

    def live_locked(self) -> list[ModelWorker]:
        """Registered workers that take requests (loading or loaded)."""
        return [worker for worker in self._workers.values() if worker.usable]

    def unloading_locked(self) -> list[ModelWorker]:
        return list(self._retired)

    def _forget_locked(self, worker: ModelWorker) -> None:
        if self._workers.get(worker.name) is worker:
            del self._workers[worker.name]

    def register_locked(self, worker: ModelWorker) -> None:
        self._workers[worker.name] = worker
        self._on_change()

    def retire_locked(self, worker: ModelWorker, reason: LoadReason) -> bool:
        """Unregister the worker and stop it; True if it had no jobs (it unloads at once)."""
        self._forget_locked(worker)
        self._retired.append(worker)
        unloads_now = worker.stop(reason)
        self._on_change()
        return unloads_now

    def retire_missing_locked(self, available: dict[str, ModelFile], reason: LoadReason) -> list[ModelWorker]:
        """Unload the models whose file is no longer there (after their running requests)."""
        missing = [worker for worker in self._workers.values() if worker.model.name not in available]
        for worker in missing:
            self.retire_locked(worker, reason)
        return missing

    def change_locked(self) -> asyncio.Future[None]:
        """A future of the running loop, done at the registry's next change."""
        return self._waiters.add()

    # --- what workers report, on their threads ---------------------------------------------------

    def worker_loaded(self, worker: ModelWorker) -> None:
        with self.lock:
            self._waiters.wake_all()
        self._on_change()

    def worker_idle(self, worker: ModelWorker) -> None:
        """Unload it now if its idle timeout (or its last request's keep_alive) is 0."""
        with self.lock:
            if (
                self._workers.get(worker.name) is worker
                and worker.idle_timeout == 0
                and not worker.settings.pinned
                and not worker.busy
            ):
                self.retire_locked(worker, worker.idle_reason)
            self._waiters.wake_all()
        self._on_change()

    def worker_exited(self, worker: ModelWorker) -> None:
        with self.lock:
            self._forget_locked(worker)
            if worker in self._retired:
                self._retired.remove(worker)
            self._waiters.wake_all()
        self._on_change()

    def worker_changed(self, worker: ModelWorker) -> None:
        self._on_change()

    # --- reading --------------------------------------------------------------------------------

    def loaded_models(self) -> list[str]:
        with self.lock:
            return sorted(name for name, worker in self._workers.items() if worker.state == WorkerState.LOADED)

    def status(self) -> dict[str, WorkerStatus]:
        """Every worker's status, the unloading ones too."""
        with self.lock:
            workers = self.unloading_locked() + list(self._workers.values())
        return {worker.name: worker.status() for worker in workers}
