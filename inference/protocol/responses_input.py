"""The Responses API's input items: normalised into OpenAI's own shape (what `input_items` lists
and what a stored response keeps), and read as a conversation's turns the same way whether they
arrive now or come from a stored conversation (`previous_response_id`)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol import tool_calls as tools
from inference.protocol.chat import MAX_MESSAGES
from inference.protocol.images import DETAILS, MEDIA_MARKER, ImageRefused, image_from_url

logger = logging.getLogger(__name__)

_ROLES = ("user", "assistant", "system", "developer")


_TEXT_PARTS = {"input_text", "output_text", "text", "refusal"}


_NOT_TEXT_PARTS = {"input_file", "input_audio"}


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


_INPUT_SCHEMA = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "type": {
                        "type": "string",
                        "enum": ["message", "function_call", "function_call_output", "reasoning"],
                    },
                    "role": {"type": "string", "enum": list(_ROLES)},
                    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                    "call_id": {"type": "string"},
                    "name": {"type": "string"},
                    "arguments": {"type": "string"},
                    "output": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                },
            },
        },
    ]
}


@extend_schema_field(_INPUT_SCHEMA)
class InputField(serializers.Field):
    """A string (one user message) or a list of input items, normalised with ids."""

    default_error_messages = {
        "invalid": "Expected a string or a list of input items.",
        "item": "Item {index}: {problem}",
        "too_many": f"At most {MAX_MESSAGES} input items.",
    }

    def to_internal_value(self, data: Any) -> tuple[dict[str, Any], ...]:
        if isinstance(data, str):
            return (_message_item("user", [{"type": "input_text", "text": data}]),)
        if not isinstance(data, list) or not data:
            self.fail("invalid")
        if len(data) > MAX_MESSAGES:
            self.fail("too_many")
        items = []
        for index, item in enumerate(data):
            try:
                normalised = _normalised_item(item)
            except ImageRefused as refused:
                raise refused.validation_error((index, "content", *refused.at)) from None
            except ValueError as problem:
                self.fail("item", index=index, problem=problem)
            if normalised is not None:
                items.append(normalised)
        return tuple(items)

    def to_representation(self, value: Any) -> Any:
        return value


def _message_item(role: str, content: list[dict[str, Any]], given_id: str | None = None) -> dict[str, Any]:
    return {
        "id": given_id or item_id("msg"),
        "type": "message",
        "role": role,
        "content": content,
        "status": "completed",
    }


def _text_of(parts: Any, what: str, *, images: bool = False) -> list[dict[str, Any]]:
    """Text content parts ({"type": "input_text", "text": ...}) of a message or an output, and
    (`images`: a user's message) input_image parts, checked (ImageRefused at the part)."""
    if isinstance(parts, str):
        return [{"type": "input_text", "text": parts}]
    if not isinstance(parts, list):
        raise ValueError(f"'{what}' must be a string or a list of content parts.")
    texts = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image":
            texts.append(_image_part(part, index, images))
            continue
        if kind in _NOT_TEXT_PARTS:
            raise ValueError(f"content part type '{kind}' is not supported: this server handles text only.")
        if kind not in _TEXT_PARTS:
            raise ValueError(f"each content part needs a 'type' among {sorted(_TEXT_PARTS)}.")
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            raise ValueError(f"a '{kind}' content part needs a string 'text'.")
        texts.append({"type": kind, "text": text})
    return texts


def _image_part(part: dict[str, Any], index: int, allowed: bool) -> dict[str, Any]:
    if not allowed:
        raise ImageRefused("Only user messages may hold images.", (index,))
    detail = part.get("detail", "auto")
    if detail not in DETAILS:
        raise ImageRefused(f"'detail' must be one of {', '.join(DETAILS)}.", (index,))
    if "file_id" in part and "image_url" not in part:
        raise ImageRefused("Images by file_id are not supported: send 'image_url' as a data URL.", (index,))
    try:
        image_from_url(part.get("image_url"))
    except ImageRefused as refused:
        raise ImageRefused(str(refused), (index,)) from None
    return {"type": "input_image", "image_url": part["image_url"], "detail": detail}


def _string(item: dict[str, Any], key: str, *, blank: bool = False) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not value and not blank):
        raise ValueError(f"'{key}' must be a {'' if blank else 'non-empty '}string.")
    return value


def _normalised_item(item: Any) -> dict[str, Any] | None:
    """An input item in OpenAI's shape with an id; None for items that do not reach the model."""
    if not isinstance(item, dict):
        raise ValueError("each input item must be an object.")
    kind = item.get("type", "message")
    given_id = item.get("id") if isinstance(item.get("id"), str) else None
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise ValueError(f"'role' must be one of {', '.join(_ROLES)}.")
        content = _text_of(item.get("content"), "content", images=role == "user")
        if role == "assistant":
            content = [{**part, "type": "output_text", "annotations": []} for part in content]
        return _message_item(role, content, given_id)
    if kind == "function_call":
        call = {
            "id": given_id or item_id("fc"),
            "type": "function_call",
            "call_id": _string(item, "call_id"),
            "name": _string(item, "name"),
            "arguments": _string(item, "arguments", blank=True),
            "status": "completed",
        }
        if isinstance(item.get("namespace"), str):
            call["namespace"] = item["namespace"]
        return call
    if kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else "\n".join(part["text"] for part in _text_of(output, "output"))
        return {
            "id": given_id or item_id("fco"),
            "type": "function_call_output",
            "call_id": _string(item, "call_id"),
            "output": text,
            "status": "completed",
        }
    if kind == "reasoning":
        return _reasoning_item(item, given_id)
    raise ValueError(
        f"input items of type '{kind}' are not supported (message, function_call, function_call_output, reasoning)."
    )


def _reasoning_item(item: dict[str, Any], given_id: str | None) -> dict[str, Any] | None:
    """An earlier answer's thinking, as its text (None: encrypted only, which no model here reads)."""
    parts = [part for key in ("content", "summary") for part in item.get(key) or () if isinstance(part, dict)]
    text = "\n".join(part["text"] for part in parts if isinstance(part.get("text"), str))
    if not text:
        logger.debug("ignoring a reasoning input item without text")
        return None
    return {
        "id": given_id or item_id("rs"),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def conversation_turns(items: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[tools.Turn]:
    """Normalised items as turns: developer as system; calls, their outputs and thinking as the
    assistant's and the tools' turns."""
    call_names: dict[str, str] = {}
    turns: list[tools.Turn] = []
    for number, item in enumerate(items):
        if item["type"] == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            turns.append(_message_turn(role, item["content"], ("input", number, "content")))
        elif item["type"] == "reasoning":
            turns.append(tools.Turn("assistant", reasoning=item["content"][0]["text"]))
        elif item["type"] == "function_call":
            call_names[item["call_id"]] = item["name"]
            call = tools.ToolCall(item["call_id"], item["name"], item["arguments"])
            turns.append(tools.Turn("assistant", calls=(call,)))
        else:
            name = call_names.get(item["call_id"], item["call_id"])
            turns.append(tools.Turn("tool", item["output"], call_id=item["call_id"], name=name))
    return turns


def _message_turn(role: str, parts: list[dict[str, Any]], at: tuple[str | int, ...]) -> tools.Turn:
    """A message's parts as a turn: its text, each image at a MEDIA_MARKER (decoded again: a stored
    conversation keeps the data URL)."""
    texts, images = [], []
    for index, part in enumerate(parts):
        if part["type"] == "input_image":
            try:  # a stored URL, continued after server.fetch_image_urls was turned off: a 400 too
                images.append(replace(image_from_url(part["image_url"]), at=(*at, index)))
            except ImageRefused as refused:
                raise refused.validation_error((*at, index)) from None
            texts.append(MEDIA_MARKER)
        else:
            texts.append(part["text"])
    return tools.Turn(role, "\n".join(texts), images=tuple(images))
