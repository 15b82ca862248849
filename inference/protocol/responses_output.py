"""The stored side of OpenAI's Responses API: the query of a page of a response's input items
and the page itself; the OpenAPI description of the response object, a deleted one, and that
page. (`inference.serving.responses` builds the answers.)"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

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


class InputItemsQuerySerializer(serializers.Serializer):
    """GET /v1/responses/{id}/input_items?limit=&order=&after=: a page of a response's input."""

    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)
    order = serializers.ChoiceField(choices=["asc", "desc"], default="desc")
    after = serializers.CharField(required=False, max_length=64)

    @classmethod
    def page(cls, query: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The page of `items` the query asks for, as OpenAI lists it."""
        serializer = cls(data=query)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        ordered = items if values["order"] == "asc" else items[::-1]
        ids = [item.get("id") for item in ordered]
        start = ids.index(values["after"]) + 1 if values.get("after") in ids else 0
        data = ordered[start : start + values["limit"]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None,
            "has_more": start + len(data) < len(ordered),
        }
