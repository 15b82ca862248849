"""Thinking within one choice's output: where it opens and closes, how many tokens it took, and
when its budget forces the end marker.

A model thinks between its template's markers ("<think>" … "</think>"). A `ThinkingWatch` reads a
choice's text token by token as it is generated — a marker may span several tokens, and one token
may hold the end of a marker and the text after it — and counts the tokens with text inside
thinking (the markers' own tokens do not count). Once that count reaches the job's budget while
thinking is still open, it hands out the end marker's tokens, to be forced as the next ones
instead of sampled; the model then answers. Thinking opened again (the start marker generated
once more) is bounded by the same, already spent budget.

Owned by one choice of the scheduler: only the model's worker thread touches it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from inference.runtime.jobs import Thinking


@dataclass
class _Held:
    """A token whose text (what is left of it) is held: it may still prove part of a marker."""

    length: int
    countable: bool  # sampled, and not counted yet


class ThinkingWatch:
    """One choice's thinking: inside or not, its tokens counted, the end marker to force."""

    def __init__(self, thinking: Thinking, end_tokens: Sequence[int]) -> None:
        if not thinking.start or not thinking.end or not end_tokens:
            raise ValueError("thinking needs a start and an end marker, and the end marker's tokens")
        self._start, self._end, self._budget = thinking.start, thinking.end, thinking.budget
        self._end_tokens = tuple(end_tokens)
        self.inside = thinking.open
        self._counted = 0  # tokens known to hold text of thinking
        self._held = ""  # the end of the text so far that may still become the marker looked for
        self._pieces: list[_Held] = []  # the tokens whose text lies in `_held`, in order
        self._forcing: deque[int] = deque()
        self._forced = False  # the end marker was forced since thinking last opened
        self._check_budget()

    @property
    def reasoning_tokens(self) -> int:
        """Tokens of thinking so far: inside, those held count too (thinking goes on until its
        end marker has come whole)."""
        return self._counted + (sum(piece.countable for piece in self._pieces) if self.inside else 0)

    @property
    def forcing(self) -> bool:
        """Whether the next tokens are the end marker's, forced."""
        return bool(self._forcing)

    def forced(self) -> int | None:
        """The next token to force instead of sampling one; None: sample."""
        return self._forcing.popleft() if self._forcing else None

    def feed(self, text: str, *, forced: bool = False) -> None:
        """The text of the choice's next token (`forced`: one of the end marker's, never counted)."""
        self._pieces.append(_Held(len(text), countable=not forced))
        self._held += text
        while (at := self._held.find(marker := self._end if self.inside else self._start)) >= 0:
            self._settle(at, at + len(marker))
            self.inside = not self.inside
            if self.inside:
                self._forced = False
            else:  # closed: whatever is left of a forced marker is not needed any more
                self._forcing.clear()
        marker = self._end if self.inside else self._start
        cut = len(self._held) - _longest_marker_start(self._held, marker)
        self._settle(cut, cut)
        self._check_budget()

    def _settle(self, text_end: int, cut: int) -> None:
        """The held text before `text_end` is no marker's: inside, its tokens count. The held text
        before `cut` (that text, and a marker after it) is let go."""
        start, kept = 0, []
        for piece in self._pieces:
            end = start + piece.length
            if self.inside and piece.countable and start < text_end:
                self._counted += 1
                piece.countable = False
            if end > cut or (piece.length == 0 and start >= cut):  # text (or a part of a character) after the cut
                kept.append(_Held(end - max(start, cut), piece.countable))
            start = end
        self._pieces, self._held = kept, self._held[cut:]

    def _check_budget(self) -> None:
        if self.inside and self._budget is not None and not self._forced and self.reasoning_tokens >= self._budget:
            self._forcing.extend(self._end_tokens)
            self._forced = True


def _longest_marker_start(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (short of all of it)."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0
