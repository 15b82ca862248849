"""Text completions (/v1/completions): prompts in, text_completion objects or SSE chunks out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol.common import envelope, usage_body
from inference.protocol.fields import (
    GenerationRequestSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    generation_options,
    include_usage,
    optional,
)
from inference.protocol.sse import sse_frame, sse_stream
from inference.runtime.jobs import CompletionJob, Finished, Generation, TextDelta, TokenLogprob

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
                CompletionJob(prompt=prompt, suffix=values.get("suffix"), logprobs=values.get("logprobs"), **options)
                for prompt in values["prompt"]
            ),
            stream=values.get("stream", False),
            include_usage=include_usage(values),
            echo=values.get("echo", False),
            logprobs=values.get("logprobs") is not None,
            user=values.get("user", ""),
        )


def _logprobs_body(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    """The legacy shape: parallel lists, and each token's character offset in the text."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{alternative.token: alternative.logprob for alternative in entry.top} for entry in entries],
        "text_offset": offsets,
    }


def _echo(request: CompletionRequest, index: int) -> str:
    per_prompt = request.jobs[0].n
    return request.jobs[index // per_prompt].prompt if request.echo else ""


async def completion_body(generation: Generation, request: CompletionRequest) -> dict[str, Any]:
    """Collect a generation's events into an OpenAI text_completion object."""
    texts = [[_echo(request, index)] for index in range(generation.choices)]
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(generation.choices)]
    finished: dict[int, Finished] = {}
    async for event in generation.events:
        if isinstance(event, TextDelta):
            texts[event.index].append(event.text)
            logprobs[event.index].extend(event.logprobs)
        elif isinstance(event, Finished):
            finished[event.index] = event
    return {
        **envelope(generation, "text_completion"),
        "choices": [
            {
                "text": "".join(texts[index]),
                "index": index,
                "logprobs": _logprobs_body(logprobs[index], len(texts[index][0])) if request.logprobs else None,
                "finish_reason": finished[index].finish_reason,
            }
            for index in range(generation.choices)
        ],
        "usage": usage_body(generation, list(finished.values())),
    }


def completion_chunks(generation: Generation, request: CompletionRequest) -> AsyncIterator[bytes]:
    """The generation as text_completion SSE events (each with part of one choice's text)."""
    return sse_stream(generation, _chunks(generation, request))


async def _chunks(generation: Generation, request: CompletionRequest) -> AsyncIterator[bytes]:
    usage_field = {"usage": None} if request.include_usage else {}
    offsets = [0] * generation.choices

    def chunk(index: int, text: str, finish_reason: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse_frame({**envelope(generation, "text_completion"), "choices": [choice], **usage_field})

    finished: list[Finished] = []
    for index in range(generation.choices):
        if echo := _echo(request, index):
            offsets[index] = len(echo)
            yield chunk(index, echo)
    async for event in generation.events:
        if isinstance(event, TextDelta):
            logprobs = _logprobs_body(event.logprobs, offsets[event.index]) if request.logprobs else None
            offsets[event.index] += len(event.text)
            yield chunk(event.index, event.text, logprobs=logprobs)
        elif isinstance(event, Finished):
            finished.append(event)
            yield chunk(event.index, "", finish_reason=event.finish_reason)
    if request.include_usage:
        yield sse_frame(
            {**envelope(generation, "text_completion"), "choices": [], "usage": usage_body(generation, finished)}
        )
