"""llama.cpp server's /tokenize and /detokenize: text into a model's tokens and back, in its
shapes (`{"tokens": [...]}`, `{"content": "..."}`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest_framework import serializers

from inference.protocol.fields import (
    KeepAliveField,
    OpenAIRequestSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    optional,
)
from inference.runtime.jobs import DetokenizeJob, TokenizeJob

# A token's text, or its bytes where they are no UTF-8 text alone (as llama.cpp answers).
_PIECE = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}]}

TOKENIZE_SCHEMA = {
    "type": "object",
    "properties": {
        "tokens": {
            "anyOf": [  # not oneOf: no tokens at all is both
                {"type": "array", "items": {"type": "integer"}},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"id": {"type": "integer"}, "piece": _PIECE},
                        "required": ["id", "piece"],
                    },
                },
            ]
        }
    },
    "required": ["tokens"],
}

DETOKENIZE_SCHEMA = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}


@dataclass(frozen=True)
class TokensRequest:
    """A /tokenize or /detokenize request: the model it names and the job for it."""

    model: str | None
    job: TokenizeJob | DetokenizeJob


class TokenizeRequestSerializer(OpenAIRequestSerializer):
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    content = StrictCharField(allow_blank=True)
    add_special = optional(StrictBooleanField)
    with_pieces = optional(StrictBooleanField)
    keep_alive = optional(KeepAliveField)

    @classmethod
    def parse(cls, data: Any) -> TokensRequest:
        values = cls.values(data)
        job = TokenizeJob(
            content=values["content"],
            add_special=values.get("add_special", False),  # llama.cpp's default
            with_pieces=values.get("with_pieces", False),
            keep_alive=values.get("keep_alive"),
        )
        return TokensRequest(model=values.get("model") or None, job=job)


class DetokenizeRequestSerializer(OpenAIRequestSerializer):
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    # Ids outside the vocabulary are the model's to refuse: it alone knows its size.
    tokens = serializers.ListField(child=StrictIntegerField(min_value=-(2**31), max_value=2**31 - 1))
    keep_alive = optional(KeepAliveField)

    @classmethod
    def parse(cls, data: Any) -> TokensRequest:
        values = cls.values(data)
        job = DetokenizeJob(tokens=tuple(values["tokens"]), keep_alive=values.get("keep_alive"))
        return TokensRequest(model=values.get("model") or None, job=job)
