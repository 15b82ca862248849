"""DRF fields that accept only what the OpenAI API means, and the base of request serializers."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol.images import DETAILS, MEDIA_MARKER, Image, ImageRefused, image_from_url
from inference.runtime.jobs import Sampling

logger = logging.getLogger(__name__)


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


@extend_schema_field({"type": "object"})
class StrictDictField(serializers.DictField):
    """A JSON object (DRF's DictField also takes form data and lists of pairs)."""

    def to_internal_value(self, data: Any) -> dict:
        if not isinstance(data, dict):
            self.fail("not_a_dict", input_type=type(data).__name__)
        return super().to_internal_value(data)


TEXT_PART = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
TEXT_PARTS = {"type": "array", "items": TEXT_PART}
IMAGE_PART = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["image_url"]},
        "image_url": {
            "type": "object",
            "properties": {"url": {"type": "string"}, "detail": {"type": "string", "enum": list(DETAILS)}},
            "required": ["url"],
        },
    },
    "required": ["type", "image_url"],
}


@dataclass(frozen=True)
class Illustrated:
    """Content with images: its text holds a MEDIA_MARKER where each image was."""

    text: str
    images: tuple[Image, ...]


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [TEXT_PART, IMAGE_PART]}}]})
class ContentField(serializers.Field):
    """Message content: a string, or a list of text and image_url parts (joined by newlines; an
    image as a MEDIA_MARKER, the content then Illustrated)."""

    default_error_messages = {
        "invalid": "Expected a string or a list of content parts.",
        "part": "Expected a content part object with a 'type'.",
        "part_type": "Content part type {part_type!r} is not supported: expected 'text' or 'image_url'.",
        "text": "A text content part needs a string 'text'.",
    }

    def to_internal_value(self, data: Any) -> str | Illustrated:
        if isinstance(data, str):
            return data
        if not isinstance(data, list):
            self.fail("invalid")
        texts, images = [], []
        for index, part in enumerate(data):
            if not isinstance(part, dict) or "type" not in part:
                self.fail("part")
            if part["type"] == "image_url":
                try:
                    images.append(replace(_image_part(part), at=(index,)))
                except ImageRefused as refused:
                    raise refused.validation_error((index,)) from None
                texts.append(MEDIA_MARKER)
                continue
            if part["type"] != "text":
                self.fail("part_type", part_type=part["type"])
            if not isinstance(part.get("text"), str):
                self.fail("text")
            texts.append(part["text"])
        return Illustrated("\n".join(texts), tuple(images)) if images else "\n".join(texts)

    def to_representation(self, value: Any) -> Any:
        return value


def _image_part(part: dict[str, Any]) -> Image:
    spec = part.get("image_url")
    if not isinstance(spec, dict):
        raise ImageRefused("An image_url part needs an object 'image_url' with a 'url'.")
    if spec.get("detail", "auto") not in DETAILS:
        raise ImageRefused(f"'detail' must be one of {', '.join(DETAILS)}.")
    return image_from_url(spec.get("url"))


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}]})
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


@extend_schema_field({"oneOf": [{"type": "number"}, {"type": "string"}]})
class KeepAliveField(serializers.Field):
    """Ollama's keep_alive: seconds, or a duration as Go writes one ("10m", "1h30m", "1.5h",
    "300ms"; a bare number is seconds); negative = forever."""

    default_error_messages = {
        "invalid": "Expected seconds or a duration such as '10m' (negative: keep loaded).",
    }
    _units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    _part = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
    _duration = re.compile(r"^(-?)((?:\d+(?:\.\d+)?(?:h|ms|m|s|us|µs|ns))+|\d+(?:\.\d+)?)$")

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
            seconds = float(data)
        elif isinstance(data, str) and (match := self._duration.match(data.strip())):
            sign, duration = match.groups()
            parts = self._part.findall(duration)
            seconds = sum(float(number) * self._units[unit] for number, unit in parts) if parts else float(duration)
            seconds = -seconds if sign else seconds
        else:
            self.fail("invalid")
        return -1.0 if seconds < 0 else seconds

    def to_representation(self, value: float) -> float:
        return value


@extend_schema_field({"type": "object", "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}})
class LogitBiasField(serializers.Field):
    """{"<token id>": bias from -100 to 100}, as (token, bias) pairs."""

    default_error_messages = {
        "invalid": "Expected an object of token ids (as strings) to numbers between -100 and 100.",
        "too_many": "At most 300 tokens may be biased.",
    }

    def to_internal_value(self, data: Any) -> tuple[tuple[int, float], ...]:
        if not isinstance(data, dict):
            self.fail("invalid")
        if len(data) > 300:
            self.fail("too_many")
        pairs = []
        for token, bias in data.items():
            if not str(token).isdigit() or isinstance(bias, bool) or not isinstance(bias, (int, float)):
                self.fail("invalid")
            if not -100 <= bias <= 100:
                self.fail("invalid")
            pairs.append((int(token), float(bias)))
        return tuple(pairs)

    def to_representation(self, value: Any) -> Any:
        return value


def optional(field_class: Callable[..., serializers.Field], **kwargs: Any) -> serializers.Field:
    return field_class(required=False, allow_null=True, **kwargs)


def sampling_from(values: dict[str, Any]) -> Sampling:
    return Sampling(
        **{option.name: values[option.name] for option in dataclass_fields(Sampling) if option.name in values}
    )


class OpenAIRequestSerializer(serializers.Serializer):
    """A request body: unknown fields are ignored (logged at debug level, as OpenAI's SDKs add
    new ones all the time); known ones this server does not implement are refused with a 400
    unless they carry the value that means "not used"."""

    unsupported: dict[str, tuple[Any, ...]] = {}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields) - set(self.unsupported)
        if unknown:
            logger.debug("ignoring unknown request fields: %s", ", ".join(sorted(unknown)))
        for parameter, unused_values in self.unsupported.items():
            if parameter in self.initial_data and self.initial_data[parameter] not in unused_values:
                raise serializers.ValidationError({parameter: f"'{parameter}' is not supported by this server."})
        return attrs

    @classmethod
    def values(cls, data: Any) -> dict[str, Any]:
        """The validated fields that were given (null counts as not given)."""
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {type(data).__name__}."]}
            )
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return {key: value for key, value in serializer.validated_data.items() if value is not None}


class SamplingSerializer(serializers.Serializer):
    """The sampling settings (Sampling's fields), by the names OpenAI's requests and Ollama's
    `options` share."""

    temperature = optional(StrictFloatField, min_value=0.0, max_value=2.0)
    top_p = optional(StrictFloatField, min_value=0.0, max_value=1.0)
    top_k = optional(StrictIntegerField, min_value=0, max_value=2**31 - 1)
    min_p = optional(StrictFloatField, min_value=0.0, max_value=1.0)
    repeat_penalty = optional(StrictFloatField, min_value=0.0, max_value=10.0)
    presence_penalty = optional(StrictFloatField, min_value=-2.0, max_value=2.0)
    frequency_penalty = optional(StrictFloatField, min_value=-2.0, max_value=2.0)
    seed = optional(StrictIntegerField, min_value=-(2**63), max_value=2**64 - 1)


class GenerationRequestSerializer(OpenAIRequestSerializer, SamplingSerializer):
    """What chat and text completions share: the model, sampling, stopping, streaming, n."""

    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    max_tokens = optional(StrictIntegerField, min_value=1, max_value=2**31 - 1)
    stop = optional(StopField)
    n = optional(StrictIntegerField, min_value=1, max_value=128)
    stream = optional(StrictBooleanField)
    stream_options = optional(StrictDictField)
    logit_bias = optional(LogitBiasField)
    ignore_eos = optional(StrictBooleanField)
    keep_alive = optional(KeepAliveField)
    user = optional(StrictCharField, max_length=256)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        options = attrs.get("stream_options")
        if options is not None:
            if not attrs.get("stream"):
                raise serializers.ValidationError(
                    {"stream_options": "'stream_options' is only allowed when 'stream' is true."}
                )
            if not isinstance(options.get("include_usage", False), bool):
                raise serializers.ValidationError({"stream_options": {"include_usage": "Must be a boolean."}})
        return attrs


def generation_options(values: dict[str, Any]) -> dict[str, Any]:
    """The GenerationJob fields of a validated request."""
    return {
        "max_tokens": values.get("max_completion_tokens", values.get("max_tokens")),
        "stop": values.get("stop", ()),
        "sampling": sampling_from(values),
        "ignore_eos": values.get("ignore_eos", False),
        "keep_alive": values.get("keep_alive"),
        "n": values.get("n", 1),
        "logit_bias": values.get("logit_bias", ()),
    }


def include_usage(values: dict[str, Any]) -> bool:
    return values.get("stream_options", {}).get("include_usage", False)
