"""Anthropic's Messages API, the answer side as a wire shape: the error envelope (and the
exception handler that answers with it), and the OpenAPI description of the message, its events,
the token count and the error. (`inference.serving.messages` builds the answers.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.response import Response

from inference.protocol.anthropic import TEXT_BLOCK, TOOL_USE_BLOCK
from inference.protocol.errors import error_fields, error_headers
from inference.protocol.sse import sse_event_schema

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
        "stop_reason": {
            "type": ["string", "null"],
            "enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", None],
        },
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
