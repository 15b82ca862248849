"""What the endpoints share: content negotiation, SSE, usage, the model objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser

from inference.protocol.fields import StrictCharField
from inference.runtime.catalog import ModelFile
from inference.runtime.jobs import Finished, Generation
from inference.runtime.lifecycle import LoadReason

# No OpenAI request nests deeper (a JSON schema in response_format or tools comes closest);
# deeper bodies would only exhaust the stack of whatever walks them.
MAX_JSON_DEPTH = 64


class JSONBodyParser(JSONParser):
    """Parse every body as JSON, whatever its Content-Type (curl -d sends a form type); a 400
    for what would break later (absurd nesting, unknown charsets, invalid Unicode)."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except (RecursionError, LookupError) as exc:  # too deep for the parser; unknown charset
            raise ParseError(f"JSON parse error - {exc}") from None
        _check_tree(data)
        return data


def _check_tree(data: Any) -> None:
    """ParseError for nesting deeper than MAX_JSON_DEPTH, or a string that is not Unicode text
    (a lone surrogate such as "\\ud800" is valid JSON but cannot be encoded for the model)."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ParseError("JSON parse error - a string holds a lone surrogate (invalid Unicode)") from None
            continue
        if isinstance(value, dict):
            children: list[Any] = [*value.keys(), *value.values()]
        else:
            children = value if isinstance(value, list) else []
        if children and depth > MAX_JSON_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels")
        pending.extend((child, depth + 1) for child in children)


class FirstRendererNegotiation(BaseContentNegotiation):
    """Always answer JSON: SSE clients send `Accept: text/event-stream` and must not get a 406."""

    def select_parser(self, request, parsers):  # type: ignore[no-untyped-def]  # DRF's signature; DRF has no types
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):  # type: ignore[no-untyped-def]  # DRF's signature; DRF has no types
        return renderers[0], renderers[0].media_type


def envelope(generation: Generation, object_type: str) -> dict[str, Any]:
    return {"id": generation.id, "object": object_type, "created": generation.created, "model": generation.model}


def usage_body(generation: Generation, finished: list[Finished]) -> dict[str, Any]:
    """Usage of a whole request: its prompts once, every choice's completion."""
    completion = sum(event.completion_tokens for event in finished)
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": generation.prompt_tokens + completion,
        # Prompt tokens found in the model's cache and not processed again (OpenAI's field).
        "prompt_tokens_details": {"cached_tokens": generation.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": sum(event.reasoning_tokens for event in finished)},
    }


def model_object(model: ModelFile, model_id: str | None = None) -> dict[str, Any]:
    """The model, under its own name or an alias's, and what a request to it may hold (text, and
    images where it has a projector)."""
    return {
        "id": model_id or model.name,
        "object": "model",
        "created": int(model.modified),
        "owned_by": "local",
        "input_modalities": model.input_modalities,
    }


def model_list_body(models: Mapping[str, ModelFile]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model, name) for name, model in models.items()]}


class AdminModelSerializer(serializers.Serializer):
    """The body of /admin/load and /admin/unload: a model (or "all") and who asks."""

    model = StrictCharField(allow_blank=False)
    reason = serializers.ChoiceField(
        choices=[LoadReason.ADMIN_API, LoadReason.CLI, LoadReason.ADMIN_UI],
        default=LoadReason.ADMIN_API,
    )

    @classmethod
    def parse(cls, data: Any) -> tuple[str, LoadReason]:
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data["model"], LoadReason(serializer.validated_data["reason"])
