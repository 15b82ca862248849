"""A pull's progress in the terminal: one bar redrawn in place, or, when the output is a log or
a pipe, a plain line every few seconds."""

from __future__ import annotations

import time

from django.core.management.base import OutputWrapper

from inference.pulling import PullPhase, PullProgress, human_bytes

_BAR_WIDTH = 30
_PLAIN_INTERVAL = 5.0  # seconds between lines when nobody watches a bar


def _plain(text: str) -> str:
    return text  # progress is not an error: none of stderr's red


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def describe(progress: PullProgress) -> str:
    """ "44.1 MB / 98.0 MB  12.3 MB/s  ETA 0:05" (sizes unknown to the server are left out)."""
    size = f" / {human_bytes(progress.total)}" if progress.total is not None else ""
    return (
        f"{human_bytes(progress.received)}{size}  {human_bytes(progress.bytes_per_second)}/s  "
        f"ETA {duration(progress.eta_seconds)}"
    )


class TerminalProgress:
    """The progress callback of `manage.py pull`, writing to `stream` (the command's stderr)."""

    def __init__(self, stream: OutputWrapper, name: str) -> None:
        self.stream, self.name = stream, name
        self.tty = stream.isatty()
        self.last_line = float("-inf")
        self.drawn = False

    def __call__(self, progress: PullProgress) -> None:
        if self.tty:
            self._draw(progress)
        elif progress.phase is not PullPhase.DOWNLOADING or time.monotonic() - self.last_line >= _PLAIN_INTERVAL:
            self.last_line = time.monotonic()
            resumed = f" (resumed at {human_bytes(progress.resumed_from)})" if progress.resumed_from else ""
            self.stream.write(f"{self.name}: {progress.phase.value} {describe(progress)}{resumed}", style_func=_plain)

    def _draw(self, progress: PullProgress) -> None:
        if progress.total:
            done = progress.received / progress.total
            filled = int(done * _BAR_WIDTH)
            bar = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {done:4.0%}"
        else:
            bar = f"[{progress.phase.value}]"
        self.stream.write(f"\r\033[K{self.name} {bar}  {describe(progress)}", ending="", style_func=_plain)
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line, so what is written next starts on its own."""
        if self.drawn:
            self.stream.write("", style_func=_plain)
            self.drawn = False
