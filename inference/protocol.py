"""OpenAI request and response shapes: request serializers, response builders, errors, SSE."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, StreamingHttpResponse
from rest_framework import exceptions, serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.settings import api_settings

from inference.discovery import ModelFile
from inference.errors import ApiError
from inference.jobs import ChatCompletion, ChatJob, ChatMessage, Finished, Sampling, TextDelta
from inference.lifecycle import LoadReason

# --- requests -------------------------------------------------------------------------------


class JSONBodyParser(JSONParser):
    """Parse every body as JSON, whatever its Content-Type (curl -d sends a form type)."""

    media_type = "*/*"


class FirstRendererNegotiation(BaseContentNegotiation):
    """Always answer JSON: SSE clients send `Accept: text/event-stream` and must not get a 406."""

    def select_parser(self, request, parsers):  # type: ignore[no-untyped-def]
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):  # type: ignore[no-untyped-def]
        return renderers[0], renderers[0].media_type


class StrictCharField(serializers.CharField):
    """A string, never a number turned into one; whitespace kept as sent."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class MessageContentField(serializers.Field):
    """A message's content: a string or a list of text parts (joined by newlines)."""

    default_error_messages = {
        "invalid": "Expected a string or a list of content parts.",
        "part": "Expected a content part object with a 'type'.",
        "part_type": "Content part type {part_type!r} is not supported; only 'text' parts are.",
        "text": "A text content part needs a string 'text'.",
    }

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, str):
            return data
        if not isinstance(data, list):
            self.fail("invalid")
        texts = []
        for part in data:
            if not isinstance(part, dict) or "type" not in part:
                self.fail("part")
            if part["type"] != "text":
                self.fail("part_type", part_type=part["type"])
            if not isinstance(part.get("text"), str):
                self.fail("text")
            texts.append(part["text"])
        return "\n".join(texts)

    def to_representation(self, value: str) -> str:
        return value


class StopField(serializers.Field):
    default_error_messages = {
        "invalid": "Expected a string or a list of up to {limit} strings.",
        "empty": "Stop sequences must not be empty strings.",
    }
    limit = 16

    def to_internal_value(self, data: Any) -> tuple[str, ...]:
        stops = [data] if isinstance(data, str) else data
        if not isinstance(stops, list) or len(stops) > self.limit:
            self.fail("invalid", limit=self.limit)
        if not all(isinstance(stop, str) for stop in stops):
            self.fail("invalid", limit=self.limit)
        if not all(stops):
            self.fail("empty")
        return tuple(stops)

    def to_representation(self, value: tuple[str, ...]) -> list[str]:
        return list(value)


class KeepAliveField(serializers.Field):
    """Ollama's keep_alive: seconds, or a duration such as "10m", "1h30m", "45s"; negative = forever."""

    default_error_messages = {
        "invalid": "Expected seconds or a duration such as '10m' (negative: keep loaded).",
    }
    _duration = re.compile(r"^(-?)(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
            seconds = float(data)
        elif isinstance(data, str) and (match := self._duration.match(data.strip())) and data.strip("-"):
            sign, hours, minutes, secs = match.groups()
            seconds = float(hours or 0) * 3600 + float(minutes or 0) * 60 + float(secs or 0)
            seconds = -seconds if sign else seconds
        else:
            self.fail("invalid")
        return -1.0 if seconds < 0 else seconds

    def to_representation(self, value: float) -> float:
        return value


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = MessageContentField(required=False, allow_null=True)
    name = StrictCharField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("content") is None and attrs["role"] != "assistant":
            raise serializers.ValidationError({"content": "This field is required."})
        return attrs


# Parameters this server does not implement yet, with the values that mean "not used": any other
# value is refused with a 400 rather than silently ignored.
_UNSUPPORTED_PARAMETERS: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None,),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    job: ChatJob
    stream: bool = False
    include_usage: bool = False


def _optional(field_class: type[serializers.Field], **kwargs: Any) -> serializers.Field:
    return field_class(required=False, allow_null=True, **kwargs)


class ChatCompletionRequestSerializer(serializers.Serializer):
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    messages = serializers.ListField(child=MessageSerializer(), allow_empty=False)
    max_tokens = _optional(StrictIntegerField, min_value=1, max_value=2**31 - 1)
    max_completion_tokens = _optional(StrictIntegerField, min_value=1, max_value=2**31 - 1)
    temperature = _optional(StrictFloatField, min_value=0.0, max_value=2.0)
    top_p = _optional(StrictFloatField, min_value=0.0, max_value=1.0)
    top_k = _optional(StrictIntegerField, min_value=0, max_value=2**31 - 1)
    min_p = _optional(StrictFloatField, min_value=0.0, max_value=1.0)
    repeat_penalty = _optional(StrictFloatField, min_value=0.0, max_value=10.0)
    presence_penalty = _optional(StrictFloatField, min_value=-2.0, max_value=2.0)
    frequency_penalty = _optional(StrictFloatField, min_value=-2.0, max_value=2.0)
    seed = _optional(StrictIntegerField, min_value=-(2**63), max_value=2**64 - 1)
    stop = _optional(StopField)
    stream = _optional(StrictBooleanField)
    stream_options = _optional(serializers.DictField)
    ignore_eos = _optional(StrictBooleanField)
    keep_alive = _optional(KeepAliveField)
    user = _optional(StrictCharField)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for parameter, unused_values in _UNSUPPORTED_PARAMETERS.items():
            if parameter in self.initial_data and self.initial_data[parameter] not in unused_values:
                raise serializers.ValidationError(
                    {parameter: f"'{parameter}' is not supported by this server yet."}
                )
        options = attrs.get("stream_options")
        if options is not None:
            if not attrs.get("stream"):
                raise serializers.ValidationError(
                    {"stream_options": "'stream_options' is only allowed when 'stream' is true."}
                )
            if not isinstance(options.get("include_usage", False), bool):
                raise serializers.ValidationError(
                    {"stream_options": {"include_usage": "Must be a boolean."}}
                )
        return attrs

    @classmethod
    def parse(cls, data: Any) -> ChatRequest:
        """The validated request; raises ValidationError (an OpenAI 400) if it is not one."""
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        values = {key: value for key, value in serializer.validated_data.items() if value is not None}
        sampling = Sampling(
            **{option.name: values[option.name] for option in fields(Sampling) if option.name in values}
        )
        messages = tuple(
            ChatMessage(
                role="system" if message["role"] == "developer" else message["role"],
                content=message.get("content") or "",
            )
            for message in values["messages"]
        )
        return ChatRequest(
            model=values.get("model") or None,
            job=ChatJob(
                messages=messages,
                max_tokens=values.get("max_completion_tokens", values.get("max_tokens")),
                stop=values.get("stop", ()),
                sampling=sampling,
                ignore_eos=values.get("ignore_eos", False),
                keep_alive=values.get("keep_alive"),
            ),
            stream=values.get("stream", False),
            include_usage=values.get("stream_options", {}).get("include_usage", False),
        )


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


# --- responses ------------------------------------------------------------------------------


def envelope(completion: ChatCompletion, object_type: str) -> dict[str, Any]:
    return {"id": completion.id, "object": object_type, "created": completion.created, "model": completion.model}


def usage_body(completion: ChatCompletion, finished: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        # Prompt tokens found in the model's cache and not processed again (OpenAI's field).
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
    }


async def chat_completion_body(completion: ChatCompletion) -> dict[str, Any]:
    """Collect a completion's events into an OpenAI chat.completion object."""
    texts: list[str] = []
    async for event in completion.events:
        if isinstance(event, TextDelta):
            texts.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    message = {"role": "assistant", "content": "".join(texts), "refusal": None}
    return {
        **envelope(completion, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": usage_body(completion, finished),
    }


def sse_event(payload: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


async def chat_completion_chunks(
    completion: ChatCompletion, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """The completion as OpenAI chat.completion.chunk SSE events, ending with [DONE].

    An error after the stream started is sent as one `data: {"error": ...}` event, then the
    stream ends. Closing this iterator (the client went away) stops the generation.
    """
    usage_field = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse_event(
            {**envelope(completion, "chat.completion.chunk"), "choices": [choice], **usage_field}
        )

    # Content chunks differ only in their text: encode the rest once (per-token JSON encoding
    # was a sixth of the event loop's work per token).
    placeholder = json.dumps("\x00")
    before, after = chunk({"content": "\x00"}).decode().split(placeholder)

    def content_chunk(text: str) -> bytes:
        return f"{before}{json.dumps(text, ensure_ascii=False)}{after}".encode()

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for event in completion.events:
            if isinstance(event, TextDelta):
                yield content_chunk(event.text)
            elif isinstance(event, Finished):
                yield chunk({}, finish_reason=event.finish_reason)
                if include_usage:
                    yield sse_event(
                        {
                            **envelope(completion, "chat.completion.chunk"),
                            "choices": [],
                            "usage": usage_body(completion, event),
                        }
                    )
    except ApiError as exc:
        yield sse_event(error_body(exc.message, exc.type, exc.param, exc.code))
        return
    finally:
        await completion.events.aclose()  # type: ignore[attr-defined]
    yield SSE_DONE


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def model_object(model: ModelFile) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": int(model.modified), "owned_by": "local"}


def model_list_body(models: Mapping[str, ModelFile]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model) for model in models.values()]}


# --- errors ---------------------------------------------------------------------------------

_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def error_type_for(status: int) -> str:
    return "server_error" if status >= 500 else _TYPE_BY_STATUS.get(status, "invalid_request_error")


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_json_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JsonResponse:
    return JsonResponse(error_body(message, error_type_for(status), param, code), status=status)


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str]:
    """The first error in a DRF error tree, with the path of its field (`messages[0].role`)."""
    if isinstance(detail, Mapping):
        key, value = next(iter(detail.items()))
        if key == api_settings.NON_FIELD_ERRORS_KEY:
            return _first_validation_error(value, path)
        child = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
        return _first_validation_error(value, child)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], path)
    return path or None, str(detail)


def error_details(exc: Exception) -> tuple[int, str | None, str]:
    """The HTTP status, error code and message that an exception answers with."""
    known = _error_fields(exc)
    if known is None:
        return 500, None, f"{type(exc).__name__}: {exc}"
    status, message, _param, code, _type = known
    return status, code, message


def requested_model(request: Any) -> str:
    """The model a request named, if its body was readable and named one."""
    try:
        model = request.data.get("model")
    except Exception:
        return ""
    return model if isinstance(model, str) else ""


def _error_fields(exc: Exception) -> tuple[int, str, str | None, str | None, str] | None:
    """(status, message, param, code, type) for the exceptions we answer in the envelope."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message, exc.param, exc.code, exc.type
    if isinstance(exc, exceptions.ValidationError):
        param, detail = _first_validation_error(exc.detail)
        message = f"Invalid '{param}': {detail}" if param else detail
        return 400, message, param, None, "invalid_request_error"
    if isinstance(exc, exceptions.ParseError):
        return 400, f"The request body is not valid JSON: {exc.detail}", None, "invalid_json", "invalid_request_error"
    if isinstance(exc, RequestDataTooBig):
        return 413, "The request body is too large.", None, "request_too_large", "invalid_request_error"
    if isinstance(exc, exceptions.APIException):
        return exc.status_code, str(exc.detail), None, None, error_type_for(exc.status_code)
    return None


def openai_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's exception handler: every error leaves as an OpenAI error envelope."""
    known = _error_fields(exc)
    if known is None:
        return None  # a bug: Django's 500 handler answers (in the same envelope) and logs it
    status, message, param, code, error_type = known
    return Response(error_body(message, error_type, param, code), status=status)
