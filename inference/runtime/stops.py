"""Stop sequences over streamed text: hold back only what could still become a stop sequence; and
llama.cpp's indentation limit for code (n_indent): the text ends where a line after the first is
indented less, holding back only a line's leading whitespace until its first other character."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...], indent: int = 0) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""
        self.matched: str | None = None  # the stop sequence that ended the text, once one has
        self._indent = indent
        # With an indent: the leading whitespace of the line being written, held until its first
        # other character; None on the first line and once a line's indentation was judged.
        self._held: str | None = None
        self.underindented = False  # whether a line indented less than `indent` ended the text

    def feed(self, text: str) -> tuple[str, bool]:
        """Add generated text; returns the text safe to send and whether a stop sequence (or the
        indentation limit) ended it."""
        if self._indent:
            text, self.underindented = self._indented(text)
        released, stopped = self._match(text)
        if stopped:
            self.underindented = False
        elif self.underindented:
            return released + self.flush(), True
        return released, stopped

    def flush(self) -> str:
        """Text held back that turned out not to be a stop sequence (generation ended)."""
        released, self._pending = self._pending + (self._held or ""), ""
        self._held = None
        return released

    def _match(self, text: str) -> tuple[str, bool]:
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

    def _indented(self, text: str) -> tuple[str, bool]:
        """The text up to where a line's indentation is still unknown (held back), and whether a
        line indented less than the limit ended it; as llama.cpp, any character after too little
        indentation ends it, a line break (an empty line) too, and the whitespace is kept."""
        passed = []
        for char in text:
            if self._held is None:
                passed.append(char)
                self._held = "" if char == "\n" else None
            elif char in " \t":
                self._held += char
            elif len(self._held) < self._indent:
                passed.append(self._held)
                self._held = None
                return "".join(passed), True
            else:
                passed.append(self._held + char)
                self._held = "" if char == "\n" else None
        return "".join(passed), False

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest end of the pending text that begins some stop sequence."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
