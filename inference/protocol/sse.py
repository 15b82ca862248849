"""Server-sent events, for every API that streams: one frame format, OpenAI's end and error
events, and the OpenAPI description of a stream. (`inference.serving.streams` sends them.)"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from inference.errors import ApiError
from inference.protocol.errors import error_body


def sse_frame(payload: Mapping[str, Any], *, event: str | None = None) -> bytes:
    """One server-sent event: its JSON data, named `event` if given (Anthropic's and the Responses
    API's events are named; OpenAI's chunks are not)."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n".encode() if event else f"data: {data}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def openai_error_event(error: ApiError) -> bytes:
    return sse_frame(error_body(error.message, error.type, error.param, error.code))


def sse_event_schema(description: str) -> dict[str, Any]:
    """A `text/event-stream` response: the schema of each of its events (as a client parses one:
    its `event` and `data` fields), which is what OpenAPI tools check a stream's events against."""
    return {
        "type": "object",
        "description": description,
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }
