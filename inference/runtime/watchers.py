"""Who wants to hear that something shown about the models changed: a model's state (loading,
loaded, unloading, gone), its load progress, its running and queued requests, its pin.

The pool's workers and registry call `notify` on their own threads, often (every request that
starts or ends); a watcher must only note the change and hand it to its own thread or loop (the
dashboard's models page pushes at most a few tables a second). A watcher that raises is logged,
never in the way of the model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

Watcher = Callable[[], None]


class ChangeWatchers:
    """The callbacks to call at each change; any thread may add, remove and notify."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: list[Watcher] = []

    def add(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.append(watcher)

    def remove(self, watcher: Watcher) -> None:
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def notify(self) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            try:
                watcher()
            except Exception:
                logger.exception("a watcher of the models' state failed")
