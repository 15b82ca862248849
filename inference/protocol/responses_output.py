"""The OpenAI Responses API answer's OpenAPI description: the response object, a deleted one,
and a page of input items. (`inference.serving.responses` builds the answers.)"""

from __future__ import annotations

_ITEM = {"type": "object", "properties": {"id": {"type": "string"}, "type": {"type": "string"}}, "required": ["type"]}
RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["response"]},
        "created_at": {"type": "integer"},
        "status": {"type": "string", "enum": ["completed", "incomplete", "failed", "in_progress"]},
        "model": {"type": "string"},
        "output": {"type": "array", "items": _ITEM},
        "usage": {
            "type": ["object", "null"],
            "properties": {
                "input_tokens": {"type": "integer"},
                "input_tokens_details": {"type": "object", "properties": {"cached_tokens": {"type": "integer"}}},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
        "incomplete_details": {"type": ["object", "null"]},
        "error": {"type": ["object", "null"]},
        "previous_response_id": {"type": ["string", "null"]},
        "metadata": {"type": "object"},
        "store": {"type": "boolean"},
    },
    "required": ["id", "object", "created_at", "status", "model", "output"],
}
RESPONSE_DELETED_SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}},
    "required": ["id", "object", "deleted"],
}
INPUT_ITEMS_SCHEMA = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": _ITEM},
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
        "has_more": {"type": "boolean"},
    },
    "required": ["object", "data", "has_more"],
}
