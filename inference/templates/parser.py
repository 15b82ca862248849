"""Reading a model's answer as it streams, by its template's markup: content, reasoning (the
text inside thinking markers) and tool calls (`calls` reads each one).

Split-independent: feeding any split of a text gives the same events once adjacent content,
reasoning and argument fragments are merged, because every decision waits until the text
decides it; only text that could still begin a marker is held back. Markup never reaches
Content or Reasoning (unless `split_thinking` is off, where thinking, markers included, is
content). Calls inside thinking are not calls. One parser reads one answer, on one thread.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from inference.templates.calls import CallReader, Status
from inference.templates.events import AnswerEvent, CallArguments, Content, Reasoning
from inference.templates.markup import Markup
from inference.templates.scan import PARTIAL, held_back, match


class _Mode(enum.Enum):
    CONTENT = "content"
    THINKING = "thinking"
    CALL = "call"  # a call's reader has the text
    AFTER_CALL = "after_call"  # between calls: another call, the section's end, or content


class AnswerParser:
    """One answer's reader: feed() text as it comes, finish() at its end; each returns events."""

    def __init__(
        self,
        markup: Markup,
        *,
        tools: Sequence[Mapping[str, Any]] = (),
        thinking_open: bool = False,
        split_thinking: bool = True,
        parse_calls: bool = True,
    ) -> None:
        self.markup = markup
        self.calls = markup.calls if parse_calls else None
        self.thinking = markup.thinking
        self.split = split_thinking
        self.tools = {tool["function"]["name"]: tool["function"] for tool in tools if "function" in tool}
        self._text = ""
        self._mode = _Mode.THINKING if thinking_open and self.thinking else _Mode.CONTENT
        self._newline = True  # thinking: drop the one newline after its start
        self._at_start = True  # a call without an opener may only begin the answer (or follow thinking)
        self._lstrip = False  # content after thinking: drop the whitespace that follows its end
        # Dropped where the answer begins with it: at the start, and after thinking.
        self._answer_header = markup.content_start if split_thinking else ""
        self._content_start = self._answer_header
        self._reader: CallReader | None = None
        self._pending = ""  # an opener read but not yet a call: content if no call follows
        self._index = 0
        self._finishing = False

    def feed(self, text: str) -> list[AnswerEvent]:
        self._text += text
        return self._run()

    def finish(self) -> list[AnswerEvent]:
        self._finishing = True
        return self._run()

    def _run(self) -> list[AnswerEvent]:
        events: list[AnswerEvent] = []
        while self._step(events):
            pass
        return _merged(events)

    def _step(self, events: list[AnswerEvent]) -> bool:
        """One decision on the text held; False when the text cannot decide more yet."""
        if self._mode is _Mode.THINKING:
            return self._thinking(events)
        if self._mode is _Mode.CALL:
            return self._call(events)
        if self._mode is _Mode.AFTER_CALL:
            return self._after_call(events)
        return self._content(events)

    def _emit(self, events: list[AnswerEvent], text: str, reasoning: bool = False) -> None:
        if text:
            events.append(Reasoning(text) if reasoning and self.split else Content(text))
            if not reasoning and text.strip():
                self._at_start = False

    def _markers(self) -> list[tuple[str, _Mode]]:
        markers = []
        if self.thinking is not None:
            markers.append((self.thinking.start.split()[0], _Mode.THINKING))
        if self.calls is not None and self.calls.opener:
            markers.append((self.calls.opener.split()[0], _Mode.CALL))
        return markers

    def _content(self, events: list[AnswerEvent]) -> bool:
        if self._content_start:
            stripped = self._text.lstrip()
            if stripped.startswith(self._content_start):
                self._text, self._content_start = stripped[len(self._content_start) :], ""
            elif self._content_start.startswith(stripped) and not self._finishing:
                return False
            else:
                self._content_start = ""
        if self._lstrip:
            self._text = self._text.lstrip()
            if not self._text and not self._finishing:
                return False
            self._lstrip = False
        if self.calls is not None and not self.calls.opener and self._at_start:
            stripped = self._text.lstrip()
            if stripped.startswith("{"):
                self._text = stripped
                return self._open_call(events, "")
            if not stripped and not self._finishing:
                return False
        markers = self._markers()
        hits = [(self._text.find(marker), marker, mode) for marker, mode in markers]
        hits = [hit for hit in hits if hit[0] >= 0]
        if hits:
            at, marker, mode = min(hits, key=lambda hit: hit[0])
            self._emit(events, self._text[:at])
            self._text = self._text[at:]
            return self._open_thinking(events) if mode is _Mode.THINKING else self._open_call(events, marker)
        keep = 0 if self._finishing else held_back(self._text, [marker for marker, _ in markers])
        self._emit(events, self._text[: len(self._text) - keep])
        self._text = self._text[len(self._text) - keep :]
        return False

    def _open_thinking(self, events: list[AnswerEvent]) -> bool:
        assert self.thinking is not None
        end = match(self._text, self.thinking.start)
        if end == PARTIAL and not self._finishing:
            return False
        if end is None or end == PARTIAL:  # not the whole marker: its first part is content
            first = self.thinking.start.split()[0]
            self._emit(events, first)
            self._text = self._text[len(first) :]
            return True
        if not self.split:
            self._emit(events, self._text[:end])
        self._text = self._text[end:]
        self._mode, self._newline = _Mode.THINKING, True
        return True

    def _thinking(self, events: list[AnswerEvent]) -> bool:
        assert self.thinking is not None
        if self._newline and self.split:
            if not self._text and not self._finishing:
                return False
            self._text = self._text.removeprefix("\n")
        self._newline = False
        end_marker = self.thinking.end.split()[0]
        at = self._text.find(end_marker)
        if at >= 0:
            end = match(self._text, self.thinking.end, at)
            if end == PARTIAL and not self._finishing:
                self._emit(events, self._text[:at], reasoning=True)
                self._text = self._text[at:]
                return False
            end = at + len(end_marker) if end is None or end == PARTIAL else end
            self._emit(events, self._text[:at].removesuffix("\n") if self.split else self._text[:at], reasoning=True)
            if not self.split:
                self._emit(events, self._text[at:end])
            self._text = self._text[end:]
            self._mode, self._lstrip, self._at_start = _Mode.CONTENT, self.split, True
            self._content_start = self._answer_header
            return True
        keep = 0 if self._finishing else held_back(self._text, [end_marker])
        if not self._finishing and self.split and self._text[: len(self._text) - keep].endswith("\n"):
            keep += 1  # the newline templates put before the end marker
        self._emit(events, self._text[: len(self._text) - keep], reasoning=True)
        self._text = self._text[len(self._text) - keep :]
        return False

    def _open_call(self, events: list[AnswerEvent], opener: str) -> bool:
        """At an opener (or the answer's first `{` where calls have none): a call's reader."""
        assert self.calls is not None
        end = match(self._text, self.calls.section_start + self.calls.call_start) if opener else 0
        if end == PARTIAL and not self._finishing:
            return False
        if end is None or end == PARTIAL:
            return self._refuse(events, opener)
        self._pending, self._text = self._text[:end], self._text[end:]
        self._reader = CallReader(self.calls, self.tools, self._index)
        self._mode = _Mode.CALL
        return True

    def _refuse(self, events: list[AnswerEvent], opener: str) -> bool:
        """Not a call after all: the opener's text is content, and reading goes on after it."""
        self._emit(events, opener or self._text[:1])
        self._text = self._text[len(opener or self._text[:1]) :]
        self._at_start, self._mode = False, _Mode.CONTENT
        return True

    def _call(self, events: list[AnswerEvent]) -> bool:
        assert self._reader is not None
        outcome = self._reader.read(self._text, self._finishing)
        if outcome.status is Status.REFUSED:
            self._text = self._pending + self._text
            return self._refuse(events, self._pending)
        events.extend(outcome.events)
        if outcome.status is Status.MORE:
            return False  # the reader reads its call's text from its start again, with more
        self._text = self._text[outcome.end :] if not self._finishing else ""
        self._index, self._reader, self._pending = self._index + 1, None, ""
        self._mode = _Mode.AFTER_CALL
        return True

    def _after_call(self, events: list[AnswerEvent]) -> bool:
        assert self.calls is not None
        if self.calls.multiple:
            end = match(self._text, self.calls.separator + self.calls.call_start)
            if end == PARTIAL and not self._finishing:
                return False
            if end is not None and end != PARTIAL and (self.calls.separator + self.calls.call_start).strip():
                self._pending, self._text = self._text[:end], self._text[end:]
                self._reader = CallReader(self.calls, self.tools, self._index)
                self._mode = _Mode.CALL
                return True
        end = match(self._text, self.calls.section_end)
        if end == PARTIAL and not self._finishing:
            return False
        if end is not None and end != PARTIAL:
            self._text = self._text[end:]
        self._mode, self._at_start = _Mode.CONTENT, False
        return True


def _merged(events: list[AnswerEvent]) -> list[AnswerEvent]:
    """Adjacent content, reasoning, and one call's argument fragments, as one event each."""
    merged: list[AnswerEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, Content) and isinstance(last, Content):
            merged[-1] = Content(last.text + event.text)
        elif isinstance(event, Reasoning) and isinstance(last, Reasoning):
            merged[-1] = Reasoning(last.text + event.text)
        elif isinstance(event, CallArguments) and isinstance(last, CallArguments) and last.index == event.index:
            merged[-1] = CallArguments(event.index, last.text + event.text)
        else:
            merged.append(event)
    return merged
