"""A pull's progress as its callback sees it: phase, bytes, size, rate over the last seconds."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

_PROGRESS_INTERVAL = 0.25  # seconds between progress reports while bytes flow
_RATE_WINDOW = 5.0  # seconds of recent bytes the rate is measured over


class PullPhase(enum.Enum):
    CONNECTING = "connecting"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"


@dataclass(frozen=True)
class PullProgress:
    phase: PullPhase
    received: int  # bytes of the file on disk so far, resumed ones included
    total: int | None  # the file's size, when the server says
    resumed_from: int
    bytes_per_second: float  # over the last few seconds

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.bytes_per_second <= 0:
            return None
        return max(0, self.total - self.received) / self.bytes_per_second


ProgressCallback = Callable[[PullProgress], None]


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


class Reporter:
    """Hands progress to the callback: at each phase, and every _PROGRESS_INTERVAL while bytes flow."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.last = 0.0
        self.samples: deque[tuple[float, int]] = deque()

    def report(
        self, phase: PullPhase, *, received: int, total: int | None, resumed_from: int, force: bool = False
    ) -> None:
        now = time.monotonic()
        self.samples.append((now, received))
        while now - self.samples[0][0] > _RATE_WINDOW:
            self.samples.popleft()
        if self.callback is None or (not force and now - self.last < _PROGRESS_INTERVAL):
            return
        self.last = now
        started, received_then = self.samples[0]
        elapsed = now - started
        rate = max(0.0, received - received_then) / elapsed if elapsed > 0 else 0.0
        self.callback(
            PullProgress(phase=phase, received=received, total=total, resumed_from=resumed_from, bytes_per_second=rate)
        )
