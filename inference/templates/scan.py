"""Small text tools the answer parser and the call readers share: matching a marker with its
whitespace relaxed, finding where a JSON value ends as text streams in, and closing JSON cut
off mid-way (an answer stopped by its length limit)."""

from __future__ import annotations

import json

PARTIAL = -1  # the text ends while it still matches: wait for more


def match(text: str, literal: str, at: int = 0) -> int | None:
    """Where `literal` ends if `text` (from `at`, after any whitespace) spells it, each run of
    whitespace in it matching any (or none); PARTIAL if the text ends first; None if not."""
    i = at
    for part in literal.split():
        while i < len(text) and text[i].isspace():
            i += 1
        chunk = text[i : i + len(part)]
        if not part.startswith(chunk):
            return None
        if len(chunk) < len(part):
            return PARTIAL
        i += len(part)
    return i


def held_back(text: str, markers: list[str]) -> int:
    """How many characters at the end of `text` could still be the start of one of `markers`."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[len(text) - n :]):
                longest = n
                break
    return longest


class JsonScan:
    """Where one JSON value that starts at `start` ends, found as its text grows: strings and
    escapes tracked, so a `}` inside a string does not count."""

    def __init__(self, start: int, depth: int = 0) -> None:
        self.pos, self.stack = start, ["{"] * depth
        self.in_string = self.escaped = False
        self.end: int | None = None

    def scan(self, text: str) -> int | None:
        """Scan `text` further; the end of the value once it closes."""
        while self.end is None and self.pos < len(text):
            self._char(text[self.pos])
            self.pos += 1
            if not self.stack and not self.in_string:
                self.end = self.pos
        return self.end

    def _char(self, char: str) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif char == "\\":
                self.escaped = True
            elif char == '"':
                self.in_string = False
        elif char == '"':
            self.in_string = True
        elif char in "{[":
            self.stack.append(char)
        elif char in "}]" and self.stack:
            self.stack.pop()

    def closing(self) -> str:
        """What closes the value scanned so far: the open string and brackets."""
        closers = "".join("}" if bracket == "{" else "]" for bracket in reversed(self.stack))
        return ('"' if self.in_string else "") + closers


# What may complete a cut-off value before the brackets close: a key's colon and value, a
# literal's or a number's rest, a key after a comma.
_COMPLETIONS = ("", ": null", "null", '"_": null', "0", "e", "ue", "rue", "alse", "lse", "se", "ull", "ll", "l")


def close_json(text: str) -> str | None:
    """The text to append to a JSON object cut off mid-way (`text`) that makes it valid, if any."""
    scan = JsonScan(0)
    scan.scan(text)
    quote = '"' if scan.in_string else ""
    if scan.escaped:
        quote = 'n"'
    scan.in_string = False
    for completion in _COMPLETIONS:
        for before in (quote, quote + ": null") if quote else ("",):
            extra = before + completion + scan.closing()
            try:
                json.loads(text + extra)
            except ValueError:
                continue
            return extra
    return None
