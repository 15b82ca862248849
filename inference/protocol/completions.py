"""Text completions (/v1/completions): prompts in, text_completion objects or SSE chunks out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol.fields import (
    GenerationRequestSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    generation_options,
    include_usage,
    optional,
)
from inference.runtime.jobs import CompletionJob, FillInMiddle

# OpenAI's default for max_tokens on this endpoint.
DEFAULT_MAX_TOKENS = 16


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]})
class PromptField(serializers.Field):
    default_error_messages = {
        "invalid": "Expected a string or a non-empty list of strings.",
        "tokens": "Token arrays are not supported as prompts here; send the text.",
    }

    def to_internal_value(self, data: Any) -> tuple[str, ...]:
        if isinstance(data, str):
            return (data,)
        if isinstance(data, list) and data and all(isinstance(item, str) for item in data):
            return tuple(data)
        if isinstance(data, list) and data and all(isinstance(item, (int, list)) for item in data):
            self.fail("tokens")
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    jobs: tuple[CompletionJob, ...]  # one per prompt
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: bool = False
    user: str = ""


class CompletionRequestSerializer(GenerationRequestSerializer):
    prompt = PromptField()
    echo = optional(StrictBooleanField)
    logprobs = optional(StrictIntegerField, min_value=0, max_value=5)
    suffix = optional(StrictCharField)
    best_of = optional(StrictIntegerField, min_value=1, max_value=128)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs.get("best_of") not in (None, attrs.get("n") or 1):
            raise serializers.ValidationError({"best_of": "Only 'best_of' equal to 'n' is supported."})
        if attrs.get("echo") and attrs.get("logprobs") is not None:
            raise serializers.ValidationError({"echo": "'echo' with 'logprobs' is not supported (no prompt logprobs)."})
        return attrs

    @classmethod
    def parse(cls, data: Any) -> CompletionRequest:
        values = cls.values(data)
        options = generation_options(values)
        options["max_tokens"] = options["max_tokens"] or DEFAULT_MAX_TOKENS
        return CompletionRequest(
            model=values.get("model") or None,
            jobs=tuple(
                CompletionJob(
                    prompt=prompt,
                    fill=FillInMiddle(prefix=prompt, suffix=values["suffix"]) if "suffix" in values else None,
                    logprobs=values.get("logprobs"),
                    **options,
                )
                for prompt in values["prompt"]
            ),
            stream=values.get("stream", False),
            include_usage=include_usage(values),
            echo=values.get("echo", False),
            logprobs=values.get("logprobs") is not None,
            user=values.get("user", ""),
        )
