"""Anthropic's Messages API, the answer side: the message object, its SSE events, the error
envelope (and the exception handler that answers with it), the token count, and the OpenAPI
description of each.

Usage speaks Anthropic's language: `input_tokens` are the prompt tokens not read from the cache,
`cache_read_input_tokens` those that were (so the two add up to the prompt, and to count_tokens).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from rest_framework.response import Response

from inference.errors import ApiError
from inference.protocol import tool_calls as tools
from inference.protocol.answers import Ended, Text, answer_collected, answer_parts, with_heartbeat
from inference.protocol.anthropic import TEXT_BLOCK, TOOL_USE_BLOCK, MessagesRequest
from inference.protocol.errors import error_fields, error_headers
from inference.protocol.sse import sse_event_schema, sse_frame, sse_stream
from inference.runtime.jobs import Generation

# Seconds of silence (a long prompt being read, a tool call held back) after which a stream gets
# a ping: clients and proxies give up on streams that say nothing for long.
PING_SECONDS = 5.0

# Our statuses keep their meaning (a full queue is our 503, not Anthropic's 529), in its words.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    error_type = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def anthropic_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's exception handler for the Messages API: every error in Anthropic's envelope."""
    known = error_fields(exc)
    if known is None:
        return None  # a bug: Django's 500 handler answers and logs it
    status, message, _param, code, _type = known
    return Response(error_body(status, message), status=status, headers=error_headers(exc, code))


def _event(kind: str, body: Mapping[str, Any]) -> bytes:
    """One SSE frame: the event's type as its name and in its data."""
    return sse_frame({"type": kind, **body}, event=kind)


def _error_event(error: ApiError) -> bytes:
    return _event("error", {"error": error_body(error.status, error.message)["error"]})


_PING = _event("ping", {})


def _usage(generation: Generation, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": generation.prompt_tokens - generation.cached_tokens,
        "cache_creation_input_tokens": 0,  # every prompt is cached without being asked to
        "cache_read_input_tokens": generation.cached_tokens,
        "output_tokens": output_tokens,
    }


def _message(generation: Generation, content: list[dict[str, Any]], ended: Ended | None, request: MessagesRequest) -> dict[str, Any]:
    reason, sequence = _stop(ended, request) if ended else (None, None)
    return {
        "id": generation.id,
        "type": "message",
        "role": "assistant",
        "model": generation.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(generation, ended.finished.completion_tokens if ended else 0),
    }


def _stop(ended: Ended, request: MessagesRequest) -> tuple[str, str | None]:
    """stop_reason and stop_sequence: a stop string counts only if the request asked for it (the
    chat template's own end marker is the end of a turn)."""
    if ended.call is not None:
        return "tool_use", None
    if ended.finished.finish_reason == "length":
        return "max_tokens", None
    if ended.finished.stop_sequence in request.stop_sequences:
        return "stop_sequence", ended.finished.stop_sequence
    return "end_turn", None


def _tool_use(call: tools.ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{call.id.removeprefix('call_')}", "name": call.name, "input": arguments}


async def message_body(generation: Generation, request: MessagesRequest) -> dict[str, Any]:
    """Collect a generation into an Anthropic message (content [] when the answer is empty)."""
    text, ended = await answer_collected(generation, request.chat)
    content = [{"type": "text", "text": text}] if text else []
    if ended.call is not None:
        content.append(_tool_use(ended.call, json.loads(ended.call.arguments)))
    return _message(generation, content, ended, request)


def message_events(generation: Generation, request: MessagesRequest) -> AsyncIterator[bytes]:
    """The generation as Anthropic's SSE events: message_start, a ping, the content blocks (text
    as it comes, a tool call whole), message_delta, message_stop; a ping in every silence of
    PING_SECONDS; an `error` event (and the end) if it fails."""
    return sse_stream(generation, _events(generation, request), error_event=_error_event, done=b"")


async def _events(generation: Generation, request: MessagesRequest) -> AsyncIterator[bytes]:
    yield _event("message_start", {"message": _message(generation, [], None, request)})
    yield _PING
    index, text_open = 0, False
    parts = with_heartbeat(answer_parts(generation, request.chat), PING_SECONDS)
    async with contextlib.aclosing(parts):
        async for part in parts:
            if part is None:
                yield _PING
            elif isinstance(part, Text):
                if not text_open:
                    text_open = True
                    yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                yield _event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": part.text}})
            else:
                if text_open:
                    yield _event("content_block_stop", {"index": index})
                    index += 1
                if part.call is not None:
                    for event in _tool_use_events(index, part.call):
                        yield event
                reason, sequence = _stop(part, request)
                yield _event(
                    "message_delta",
                    {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": {"output_tokens": part.finished.completion_tokens}},
                )
                yield _event("message_stop", {})


def _tool_use_events(index: int, call: tools.ToolCall) -> list[bytes]:
    """A tool call as its own block: opened with an empty input, given whole in one delta."""
    return [
        _event("content_block_start", {"index": index, "content_block": _tool_use(call, {})}),
        _event("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": call.arguments}}),
        _event("content_block_stop", {"index": index}),
    ]


async def token_count_body(generation: Generation, request: MessagesRequest) -> dict[str, int]:
    """{"input_tokens"}: the prompt's size (a count-only generation, read to its end so that its
    record is written)."""
    async for _ in generation.events:
        pass
    return {"input_tokens": generation.prompt_tokens}


# --- OpenAPI -------------------------------------------------------------------------------------

_INTEGER = {"type": "integer"}
MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["message"]},
        "role": {"type": "string", "enum": ["assistant"]},
        "model": {"type": "string"},
        "content": {
            "type": "array",
            "items": {"anyOf": [TEXT_BLOCK, TOOL_USE_BLOCK]},
        },
        "stop_reason": {"type": ["string", "null"], "enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", None]},
        "stop_sequence": {"type": ["string", "null"]},
        "usage": {
            "type": "object",
            "properties": {
                "input_tokens": _INTEGER,
                "output_tokens": _INTEGER,
                "cache_creation_input_tokens": _INTEGER,
                "cache_read_input_tokens": _INTEGER,
            },
            "required": ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"],
        },
    },
    "required": ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"],
}
TOKEN_COUNT_SCHEMA = {"type": "object", "properties": {"input_tokens": _INTEGER}, "required": ["input_tokens"]}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            "required": ["type", "message"],
        },
    },
    "required": ["type", "error"],
}
STREAM_SCHEMA = sse_event_schema(
    "Server-sent events, `event: <type>` then `data: {event}`: message_start, ping, "
    "content_block_start, content_block_delta, content_block_stop, message_delta, message_stop (or error)."
)
