"""Embeddings (/v1/embeddings): texts or token arrays in, vectors out (floats or base64)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol.fields import KeepAliveField, OpenAIRequestSerializer, StrictCharField, optional
from inference.runtime.jobs import EmbeddingJob

TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 2048},
            TOKENS,
            {"type": "array", "items": TOKENS, "minItems": 1, "maxItems": 2048},
        ]
    }
)
class EmbeddingInputField(serializers.Field):
    """A string, a list of strings, a list of token ids, or a list of such lists."""

    default_error_messages = {
        "invalid": "Expected a string, a list of strings, a list of token ids or a list of token-id lists.",
        "empty": "The input must not be empty.",
        "too_many": "At most 2048 inputs per request.",
    }

    def to_internal_value(self, data: Any) -> tuple[str | tuple[int, ...], ...]:
        if isinstance(data, str):
            inputs: list[Any] = [data]
        elif isinstance(data, list) and data and all(_is_token(item) for item in data):
            inputs = [tuple(data)]
        elif isinstance(data, list) and all(
            isinstance(item, str) or (isinstance(item, list) and item and all(_is_token(t) for t in item))
            for item in data
        ):
            inputs = [item if isinstance(item, str) else tuple(item) for item in data]
        else:
            self.fail("invalid")
        if not inputs or any(item == "" for item in inputs):
            self.fail("empty")
        if len(inputs) > 2048:
            self.fail("too_many")
        return tuple(inputs)

    def to_representation(self, value: Any) -> Any:
        return value


def _is_token(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str | None
    job: EmbeddingJob
    encoding_format: str = "float"
    user: str = ""


class EmbeddingRequestSerializer(OpenAIRequestSerializer):
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    input = EmbeddingInputField()
    encoding_format = optional(serializers.ChoiceField, choices=["float", "base64"])
    keep_alive = optional(KeepAliveField)
    user = optional(StrictCharField, max_length=256)

    # Vectors have the model's own size: shortening them is only meaningful for models trained
    # for it, so `dimensions` is refused rather than silently ignored.
    unsupported = {"dimensions": (None,)}

    @classmethod
    def parse(cls, data: Any) -> EmbeddingRequest:
        values = cls.values(data)
        return EmbeddingRequest(
            model=values.get("model") or None,
            job=EmbeddingJob(inputs=values["input"], keep_alive=values.get("keep_alive")),
            encoding_format=values.get("encoding_format", "float"),
            user=values.get("user", ""),
        )
