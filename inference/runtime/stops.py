"""Stop sequences over streamed text: hold back only what could still become a stop sequence."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""
        self.matched: str | None = None  # the stop sequence that ended the text, once one has

    def feed(self, text: str) -> tuple[str, bool]:
        """Add generated text; returns the text safe to send and whether a stop sequence was hit."""
        self._pending += text
        if not self._stops:
            released, self._pending = self._pending, ""
            return released, False
        hits = [index for index in (self._pending.find(stop) for stop in self._stops) if index >= 0]
        if hits:
            at = min(hits)
            self.matched = next(stop for stop in self._stops if self._pending.find(stop) == at)
            released, self._pending = self._pending[:at], ""
            return released, True
        keep = self._longest_stop_prefix_suffix()
        cut = len(self._pending) - keep
        released, self._pending = self._pending[:cut], self._pending[cut:]
        return released, False

    def flush(self) -> str:
        """Text held back that turned out not to be a stop sequence (generation ended)."""
        released, self._pending = self._pending, ""
        return released

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest end of the pending text that begins some stop sequence."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
