"""The tools a request offers, the calls a model makes, and how calls and their results are written as text.

A call is a JSON object `{"name": ..., "arguments": {...}}` and nothing else (what
`inference.serving.tools` tells the model); earlier calls and their results in the history are
written back as text every chat template can render."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from inference.runtime.jobs import ChatMessage


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


def call_text(name: str, arguments: str) -> str:
    """An earlier call, written as the model would have written it."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = arguments
    return json.dumps({"name": name, "arguments": parsed})


def result_message(name: str, content: str) -> ChatMessage:
    """A tool's result, as a message every chat template accepts."""
    return ChatMessage(role="user", content=f"Result of the function {name}: {content}")
