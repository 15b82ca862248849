"""A conversation as every API's history says it, whatever its wire shape: turns with their text,
an assistant's tool calls and earlier thinking, and tools' results; the tools a request offers.

Serving renders it with the model's own chat template (calls and results in the template's own
markup), or writes calls and results as text for a template that knows no tools. A turn's images
sit at the MEDIA_MARKERs in its text, in order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from inference.protocol.images import Image


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text (OpenAI's shape)


@dataclass(frozen=True)
class Turn:
    role: str  # "system", "user", "assistant" or "tool"
    content: str = ""
    calls: tuple[ToolCall, ...] = ()  # an assistant's
    reasoning: str = ""  # an assistant's thinking before its answer
    call_id: str = ""  # a tool result: the call it answers
    name: str = ""  # a tool result: the function called
    images: tuple[Image, ...] = ()  # a user's, each at a MEDIA_MARKER in `content`, in order


def images_of(turns: tuple[Turn, ...]) -> tuple[Image, ...]:
    """The conversation's images, in order (as its text's markers are)."""
    return tuple(image for turn in turns for image in turn.images)


def merged_turns(turns: list[Turn]) -> tuple[Turn, ...]:
    """Consecutive turns of one role as one (the agent APIs' blocks and items become a turn each):
    several chat templates insist that roles alternate, and accept one system message only.
    Tool results stay one turn each, as templates expect them."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role and turn.role != "tool":
            last = merged[-1]
            merged[-1] = replace(
                last,
                content=_joined(last.content, turn.content),
                calls=last.calls + turn.calls,
                reasoning=_joined(last.reasoning, turn.reasoning),
                images=last.images + turn.images,
            )
        else:
            merged.append(turn)
    return tuple(merged)


def _joined(first: str, second: str) -> str:
    return f"{first}\n\n{second}" if first and second else first or second
