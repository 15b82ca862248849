"""llama.cpp server's /infill (fill in the middle, for code editors): its request, and the shape of
its answer, which is that of llama.cpp's /completion (`content`, `stop`, `tokens_predicted`,
`timings`, …), streamed as `data: {…}` events without a `[DONE]`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol.completions import CompletionRequest
from inference.protocol.fields import (
    GenerationRequestSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    generation_options,
    include_usage,
    optional,
)
from inference.runtime.jobs import CompletionJob, FillInMiddle, ProjectFile

_TIMINGS = {
    "type": "object",
    "properties": {
        name: {"type": "number"}
        for name in (
            "cache_n",
            "prompt_n",
            "prompt_ms",
            "prompt_per_token_ms",
            "prompt_per_second",
            "predicted_n",
            "predicted_ms",
            "predicted_per_token_ms",
            "predicted_per_second",
        )
    },
}

# No field is required: `response_fields` may pick some (as llama.cpp, "timings/prompt_n" is one).
INFILL_SCHEMA = {
    "type": "object",
    "properties": {
        "index": {"type": "integer"},
        "content": {"type": "string", "description": "The text for the gap"},
        "stop": {"type": "boolean"},
        "model": {"type": "string"},
        "tokens_predicted": {"type": "integer"},
        "tokens_evaluated": {"type": "integer", "description": "The prompt's tokens"},
        "tokens_cached": {"type": "integer"},
        "truncated": {"type": "boolean", "description": "Whether the context's end cut the answer"},
        "has_new_line": {"type": "boolean"},
        "stop_type": {"type": "string", "enum": ["eos", "word", "limit", "none"]},
        "stopping_word": {"type": "string"},
        "timings": _TIMINGS,
    },
}


@extend_schema_field({"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]})
class SamplersField(serializers.Field):
    """llama.cpp's sampler order: names, or one character each. Accepted; the order stays ours."""

    default_error_messages = {"invalid": "Expected a list of sampler names or a string of sampler characters."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) or (isinstance(data, list) and all(isinstance(name, str) for name in data)):
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class InputExtraSerializer(serializers.Serializer):
    text = StrictCharField(allow_blank=True)
    filename = optional(StrictCharField, allow_blank=True)


@dataclass(frozen=True)
class InfillRequest(CompletionRequest):
    """A /infill request: a completion of one job with a gap to fill, and the answer's fields
    that the client wants (none: all)."""

    response_fields: tuple[str, ...] = ()


class InfillRequestSerializer(GenerationRequestSerializer):
    """llama.cpp's fields; `n_predict` (or `max_tokens`) -1 is no limit, 0 processes the prompt into
    the cache and generates nothing; a `seed` of -1 is a random one."""

    unsupported = {
        "n_probs": (0,),
        "n_cmpl": (1,),
        "return_tokens": (False,),
        "grammar": ("", None),
        "json_schema": ({}, None),
        "lora": ([],),
    }

    input_prefix = StrictCharField(allow_blank=True)
    input_suffix = StrictCharField(allow_blank=True)
    input_extra = serializers.ListField(child=InputExtraSerializer(), required=False, allow_null=True)
    prompt = optional(StrictCharField, allow_blank=True)
    n_predict = optional(StrictIntegerField, min_value=-1, max_value=2**31 - 1)
    max_tokens = optional(StrictIntegerField, min_value=-1, max_value=2**31 - 1)
    max_completion_tokens = optional(StrictIntegerField, min_value=-1, max_value=2**31 - 1)
    n = optional(StrictIntegerField, min_value=1, max_value=1)
    n_indent = optional(StrictIntegerField, min_value=0, max_value=2**31 - 1)
    response_fields = serializers.ListField(child=StrictCharField(), required=False, allow_null=True)
    # Accepted without effect: the scheduler reuses any slot's cached prefix, and samples in its order.
    cache_prompt = optional(StrictBooleanField)
    id_slot = optional(StrictIntegerField)
    samplers = optional(SamplersField)
    t_max_prompt_ms = optional(StrictIntegerField)
    t_max_predict_ms = optional(StrictIntegerField)

    @classmethod
    def parse(cls, data: Any) -> InfillRequest:
        values = cls.values(data)
        limit = next((values[key] for key in ("n_predict", "max_completion_tokens", "max_tokens") if key in values), -1)
        if values.get("seed") == -1:
            del values["seed"]
        options = generation_options(values) | {"max_tokens": None if limit < 0 else limit}
        extra = tuple(
            ProjectFile(chunk["text"], *[chunk["filename"]] if chunk.get("filename") is not None else [])
            for chunk in values.get("input_extra") or ()
        )
        fill = FillInMiddle(
            prefix=values["input_prefix"],
            suffix=values["input_suffix"],
            extra=extra,
            prompt=values.get("prompt", ""),
            trim=True,
            param="model",
        )
        job = CompletionJob(prompt=values.get("prompt", ""), fill=fill, indent=values.get("n_indent", 0), **options)
        return InfillRequest(
            model=values.get("model") or None,
            jobs=(job,),
            stream=values.get("stream", False),
            include_usage=include_usage(values),
            user=values.get("user", ""),
            response_fields=tuple(values.get("response_fields") or ()),
        )
