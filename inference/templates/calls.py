"""Reading one tool call, in each of the three styles markup learns (`CallStyle`): a reader is
given the answer's text from the call's body on, again each time more arrives, and says what it
found (events), whether it needs more text, and where the call ended.

A reader commits when it emits CallStarted (the name is known and is one of the tools); before
that it may refuse, and the text stays content. After committing, malformed text ends the call
with what was read. Arguments stream as JSON text: the model's own for JSON styles, built per
argument for the tagged style (values json-parsed unless the parameter's schema type is string).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inference.templates.events import AnswerEvent, CallArguments, CallEnded, CallStarted
from inference.templates.markup import CallMarkup, CallStyle
from inference.templates.scan import PARTIAL, JsonScan, close_json, match

_NAME = re.compile(r"[A-Za-z0-9_.\-:/]{1,128}")
_NAME_SEARCH = 160
_PYTHON_LITERALS: dict[str, Any] = {
    "True": True,
    "False": False,
    "None": None,
}  # a name's delimiter must come within this many characters


class Status(enum.Enum):
    MORE = "more"  # wait for more text
    DONE = "done"  # the call ended at `Outcome.end`
    REFUSED = "refused"  # not a call (never committed): the text is content


@dataclass
class Outcome:
    status: Status
    events: list[AnswerEvent] = field(default_factory=list)
    end: int = 0


class CallReader:
    """One call's reader: its style's steps over a growing text, and the call's events."""

    def __init__(self, markup: CallMarkup, tools: Mapping[str, Mapping[str, Any]], index: int) -> None:
        self.markup, self.tools, self.index = markup, tools, index
        self.started, self.name = False, ""
        self._closed = False  # tagged style: the arguments' "}" is written
        self.arguments = ""
        self._scan: JsonScan | None = None
        self._tail: JsonScan | None = None  # JSON style: the rest of the call object after its arguments
        self._cursor = 0  # tagged style: where the next argument starts
        self._count = 0  # tagged style: arguments read

    def read(self, text: str, finishing: bool) -> Outcome:
        outcome = self._read(text, finishing)
        if finishing and outcome.status is Status.MORE:
            return self._cut_off(outcome) if self.started else Outcome(Status.REFUSED)
        return outcome

    def _read(self, text: str, finishing: bool) -> Outcome:
        if self.markup.style is CallStyle.JSON:
            return self._json(text)
        if not self.started:
            found = self._name(text)
            if not isinstance(found, tuple):
                return Outcome(Status.MORE if found == PARTIAL else Status.REFUSED)
            name, self._cursor = found
            if self.markup.style is CallStyle.TAGGED:
                after = match(text, self.markup.name_end, self._cursor)
                if after is None or after == PARTIAL:
                    return Outcome(Status.MORE if after == PARTIAL else Status.REFUSED)
                self._cursor = after
            return self._continue(text, [self._start(name)])
        return self._continue(text, [])

    def _continue(self, text: str, events: list[AnswerEvent]) -> Outcome:
        if self.markup.style is CallStyle.NAME_ARGS:
            outcome = self._arguments(text, self._cursor)
        else:
            outcome = self._tagged(text)
        outcome.events[:0] = events
        return outcome

    def _start(self, name: str) -> AnswerEvent:
        self.started, self.name = True, name
        return CallStarted(self.index, name)

    def _known(self, name: str) -> bool:
        return bool(_NAME.fullmatch(name)) and (not self.tools or name in self.tools)

    def _fragment(self, events: list[AnswerEvent], text: str) -> None:
        if text:
            self.arguments += text
            events.append(CallArguments(self.index, text))

    def _end(self, events: list[AnswerEvent], text: str, at: int) -> Outcome:
        """The call's end: `at`, after its call_end when the text spells it (else without)."""
        after = match(text, self.markup.call_end, at)
        if after == PARTIAL:
            return Outcome(Status.MORE, events)
        events.append(CallEnded(self.index, self.arguments))
        return Outcome(Status.DONE, events, at if after is None else after)

    def _cut_off(self, outcome: Outcome) -> Outcome:
        """The call's end at the answer's end: its arguments closed into valid JSON if possible."""
        events = outcome.events
        if self.markup.style is CallStyle.TAGGED:
            self._fragment(events, "" if self._closed else "}" if self.arguments else "{}")
        else:
            self._fragment(events, close_json(self.arguments) or "" if self.arguments else "{}")
        events.append(CallEnded(self.index, self.arguments))
        return Outcome(Status.DONE, events, 0)

    # JSON style: {"name": ..., "arguments": {...}, ...}

    _HEAD = r'\s*\{{\s*"{name}"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"{arguments}"\s*:\s*'

    def _json(self, text: str) -> Outcome:
        if self.started:
            return self._json_rest(text)
        head = re.compile(
            self._HEAD.format(name=re.escape(self.markup.name_key), arguments=re.escape(self.markup.arguments_key))
        )
        found = head.match(text)
        if found is not None:
            name = json.loads(f'"{found.group(1)}"')
            if not self._known(name) or not text.startswith("{", found.end()):
                return Outcome(Status.MORE if len(text) == found.end() else Status.REFUSED)
            self._scan = JsonScan(found.end())
            return self._json_rest(text, [self._start(name)])
        return self._json_whole(text)

    def _json_whole(self, text: str) -> Outcome:
        """A call object whose keys come in another order: read once it is whole."""
        start = len(text) - len(text.lstrip())
        if not text.startswith("{", start):
            return Outcome(Status.REFUSED if text[start:] else Status.MORE)
        end = JsonScan(start).scan(text)
        if end is None:
            return Outcome(Status.MORE)
        try:
            call = json.loads(text[start:end])
        except ValueError:
            return Outcome(Status.REFUSED)
        name, arguments = call.get(self.markup.name_key), call.get(self.markup.arguments_key)
        if not isinstance(name, str) or not self._known(name) or not isinstance(arguments, dict):
            return Outcome(Status.REFUSED)
        events = [self._start(name)]
        self._fragment(events, json.dumps(arguments, ensure_ascii=False))
        return self._end(events, text, end)

    def _json_rest(self, text: str, events: list[AnswerEvent] | None = None) -> Outcome:
        events = events or []
        if self._tail is None:
            assert self._scan is not None
            start = self._scan.pos
            end = self._scan.scan(text)
            self._fragment(events, text[start : self._scan.pos])
            if end is None:
                return Outcome(Status.MORE, events)
            self._tail = JsonScan(end, depth=1)
        end = self._tail.scan(text)
        if end is None:
            return Outcome(Status.MORE, events)
        return self._end(events, text, end)

    # NAME_ARGS and TAGGED: the name first

    def _name(self, text: str) -> tuple[str, int] | int | None:
        """The call's name and where what follows it starts; PARTIAL; None: no call."""
        delimiter = (self.markup.id_marker or self.markup.name_end).split()
        if delimiter:
            at = text.find(delimiter[0], 0, _NAME_SEARCH)
            if at < 0:
                return PARTIAL if len(text) < _NAME_SEARCH else None
            name = text[:at].strip()
        else:  # the name ends where whitespace or a marker begins
            found = re.match(r"\s*([^\s<\[]+)(?=[\s<\[])", text)
            if found is None:
                return PARTIAL if len(text) < _NAME_SEARCH and re.fullmatch(r"\s*[^\s<\[]*", text) else None
            name, at = found.group(1), found.end()
        if not self._known(name):
            return None
        return name, at

    def _arguments(self, text: str, at: int) -> Outcome:
        """NAME_ARGS: [id_marker id] name_end, then the arguments' JSON object."""
        events: list[AnswerEvent] = []
        if self._scan is None:
            if self.markup.id_marker:
                at = (
                    text.find(self.markup.name_end.split()[0], at, at + _NAME_SEARCH)
                    if self.markup.name_end.split()
                    else at
                )
                if at < 0:
                    return Outcome(Status.MORE)
            after = match(text, self.markup.name_end, at)
            if after == PARTIAL or (after is not None and not text[after:].strip()):
                return Outcome(Status.MORE)
            if after is None:
                return Outcome(Status.DONE, self._ended_empty(events), at)
            start = len(text) - len(text[after:].lstrip())
            if text[start] != "{":
                return Outcome(Status.DONE, self._ended_empty(events), start)
            self._scan = JsonScan(start)
        start = self._scan.pos
        end = self._scan.scan(text)
        self._fragment(events, text[start : self._scan.pos])
        if end is None:
            return Outcome(Status.MORE, events)
        return self._end(events, text, end)

    def _ended_empty(self, events: list[AnswerEvent]) -> list[AnswerEvent]:
        self._fragment(events, "{}")
        events.append(CallEnded(self.index, self.arguments))
        return events

    # TAGGED: per argument, key_start key key_end value value_end

    def _tagged(self, text: str) -> Outcome:
        events: list[AnswerEvent] = []
        if not self.arguments:
            self._fragment(events, "{")
        while not self._closed:
            found = match(text, self.markup.key_start, self._cursor) if self.markup.key_start.strip() else None
            if found == PARTIAL:
                return Outcome(Status.MORE, events)
            argument = self._argument(text, found) if found is not None else None
            if isinstance(argument, int):
                return Outcome(Status.MORE, events)
            if argument is None:
                self._closed = True
                self._fragment(events, "}")
                break
            fragment, self._cursor = argument
            self._fragment(events, fragment)
            self._count += 1
        return self._end(events, text, self._cursor)

    def _argument(self, text: str, at: int) -> tuple[str, int] | int | None:
        """One argument from `at` (after its key_start): its JSON member text and where it
        ends; PARTIAL; None if the text there is no argument."""
        key_end, value_end = self.markup.key_end, self.markup.value_end
        key_stop = text.find(key_end.split()[0], at)
        if key_stop < 0:
            return PARTIAL
        value_at = match(text, key_end, key_stop)
        if value_at is None or value_at == PARTIAL:
            return value_at
        value_stop = text.find(value_end.split()[0], value_at)
        if value_stop < 0:
            return PARTIAL
        end = match(text, value_end, value_stop)
        if end == PARTIAL:
            return PARTIAL
        raw = text[value_at:value_stop]
        raw = raw.removeprefix(key_end[len(key_end.rstrip()) :]).removesuffix(
            value_end[: len(value_end) - len(value_end.lstrip())]
        )
        key = text[at:key_stop].strip()
        member = f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(self._value(key, raw), ensure_ascii=False)}"
        return (", " if self._count else "") + member, value_stop + len(value_end.split()[0]) if end is None else end

    def _value(self, key: str, raw: str) -> Any:
        """The argument's value: the text itself where its schema says string, else its JSON."""
        parameters = self.tools.get(self.name, {}).get("parameters") or {}
        schema = (parameters.get("properties") or {}).get(key) or {}
        kind = schema.get("type") if isinstance(schema, dict) else None
        if kind == "string" or (isinstance(kind, list) and kind == ["string"]):
            return raw
        if raw in _PYTHON_LITERALS:  # `{{ value }}` of a Python bool or None
            return _PYTHON_LITERALS[raw]
        try:
            return json.loads(raw)
        except ValueError:
            return raw
