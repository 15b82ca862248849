"""The idle check: unload the models idle longer than their idle timeout (or their last
request's keep_alive), and the models whose file is gone (after their running requests). It runs
every check_interval seconds on a thread of its own, and on demand (`manage.py reaper`,
POST /admin/reap)."""

from __future__ import annotations

import logging
import threading
import time

from inference.runtime.catalog import Catalog
from inference.runtime.lifecycle import LoadReason
from inference.runtime.registry import WorkerRegistry
from inference.runtime.worker import ModelWorker

logger = logging.getLogger(__name__)


class Reaper:
    def __init__(self, catalog: Catalog, registry: WorkerRegistry) -> None:
        self._catalog = catalog
        self._registry = registry
        self._stopped = threading.Event()

    def reap(self) -> list[ModelWorker]:
        """Unload the expired and the removed models now; the workers unloading."""
        now = time.monotonic()
        available = self._catalog.available()
        with self._registry.lock:
            removed = self._registry.retire_missing_locked(available, LoadReason.FILE_REMOVED)
            expired = [
                worker
                for worker in self._registry.registered_locked()
                if (expiry := worker.idle_expiry()) is not None and now > expiry
            ]
            for worker in expired:
                self._registry.retire_locked(worker, worker.idle_reason)
        for worker in removed:
            logger.warning("the file of %s is gone: unloading it", worker.name)
        for worker in expired:
            logger.info("%s was idle for %.0f s: unloading", worker.name, now - worker.counts.last_used)
        return removed + expired

    def start(self) -> None:
        """Reap every check_interval seconds (as configured at each wait) until stopped."""

        def run() -> None:
            while not self._stopped.wait(self._catalog.config.check_interval):
                self.reap()

        threading.Thread(target=run, name="reaper", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
