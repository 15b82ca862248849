"""Model lifecycle events (loads, failed loads, unloads) and the signal that announces them.

A model's worker sends `model_lifecycle` on its own thread; `inference.services.models` records each
event as a LoadEvent row and `inference.records.metrics` counts it. (A Django signal, not a request: the
runtime still knows nothing of HTTP or the ORM.)
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)


class LoadReason(enum.StrEnum):
    FIRST_REQUEST = "first_request"
    IDLE = "idle"
    ADMIN_API = "admin_api"
    ADMIN_UI = "admin_ui"
    CLI = "cli"
    LRU = "lru"
    RELOAD = "reload"
    FILE_REMOVED = "file_removed"
    KEEP_ALIVE = "keep_alive"
    PRELOAD = "preload"  # model_manager.preload, at start
    SHUTDOWN = "shutdown"
    ERROR = "error"


class LifecycleKind(enum.StrEnum):
    LOAD = "load"
    LOAD_FAILED = "load_failed"
    UNLOAD = "unload"


@dataclass(frozen=True)
class LifecycleEvent:
    model: str
    kind: LifecycleKind
    reason: LoadReason
    duration_ms: float
    settings: dict[str, Any] = field(default_factory=dict)
    error: str = ""


# Sent with `event=LifecycleEvent(...)`.
model_lifecycle = Signal()


def announce(event: LifecycleEvent) -> None:
    """Send the event to every receiver; one that fails is logged, never raised."""
    for _receiver, result in model_lifecycle.send_robust(sender=LifecycleEvent, event=event):
        if isinstance(result, Exception):
            logger.error("recording the %s of %s failed: %s", event.kind, event.model, result)
