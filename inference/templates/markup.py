"""What a model writes around tool calls and thinking, as its chat template renders them: the
data that `learn` finds by rendering probes, `parser` reads answers with and `grammar` forces.

Markers keep the template's own whitespace (the grammar writes them as the model would); the
parser matches them with their surrounding whitespace stripped, so a model that writes
`<tool_call>{...}` instead of `<tool_call>\n{...}` is read the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class CallStyle(enum.Enum):
    """How one call's name and arguments are written."""

    JSON = "json"  # one JSON object: {name_key: name, arguments_key: {...}} (maybe more keys, e.g. an id)
    NAME_ARGS = "name_args"  # the name, name_end (maybe id_marker + an id first), then the arguments' JSON object
    TAGGED = "tagged"  # the name, name_end, then per argument: key_start key key_end value value_end


@dataclass(frozen=True)
class CallMarkup:
    """Calls in an answer: section_start, then calls joined by separator, then section_end; each
    call is call_start, its body (in `style`), call_end."""

    style: CallStyle
    section_start: str = ""
    section_end: str = ""
    call_start: str = ""
    call_end: str = ""
    separator: str = ""
    multiple: bool = False
    name_key: str = "name"  # JSON
    arguments_key: str = "arguments"  # JSON
    id_key: str = ""  # JSON: the key of a call id the template writes after the arguments (Mistral Nemo)
    name_end: str = ""  # NAME_ARGS, TAGGED
    id_marker: str = ""  # NAME_ARGS: written before a call id that comes between the name and name_end
    key_start: str = ""  # TAGGED
    key_end: str = ""  # TAGGED
    value_end: str = ""  # TAGGED

    @property
    def opener(self) -> str:
        """The text that opens the calls (whitespace stripped); empty: a call is the answer's
        first text, a JSON object."""
        return (self.section_start + self.call_start).strip()

    def texts(self) -> tuple[str, ...]:
        pieces = (
            self.section_start,
            self.section_end,
            self.call_start,
            self.call_end,
            self.separator,
            self.name_end,
            self.id_marker,
            self.key_start,
            self.key_end,
            self.value_end,
        )
        return tuple(dict.fromkeys(text.strip() for text in pieces if text.strip()))


@dataclass(frozen=True)
class ThinkingMarkup:
    """The markers around thinking, and the chat_template_kwargs that turn it off (None: none)."""

    start: str
    end: str
    disable: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Markup:
    """A template's markup: whether it shows tools to the model, its call and thinking markers."""

    renders_tools: bool
    calls: CallMarkup | None
    thinking: ThinkingMarkup | None
    content_start: str = ""  # written before an answer's text (gpt-oss's final channel header)

    def thinking_open(self, prompt: str) -> bool:
        """Whether `prompt` (generation prompt included) leaves the model inside thinking: its
        last thinking start comes after its last thinking end (R1 distill's `<think>\\n`)."""
        if self.thinking is None:
            return False
        start = prompt.rfind(self.thinking.start)
        return start >= 0 and start > prompt.rfind(self.thinking.end)

    def texts(self) -> tuple[str, ...]:
        """Every literal marker (whitespace stripped), so special tokens spelling them print."""
        thinking = (self.thinking.start, self.thinking.end) if self.thinking else ()
        calls = self.calls.texts() if self.calls else ()
        return tuple(dict.fromkeys(text for text in (*calls, *thinking, self.content_start) if text))


# The server's own instruction asks for an answer that is only {"name": ..., "arguments": {...}}.
GENERIC_MARKUP = Markup(renders_tools=False, calls=CallMarkup(style=CallStyle.JSON), thinking=None)
