"""Anthropic's Messages API, the request side: a /v1/messages (or /v1/messages/count_tokens) body,
validated and turned into the ChatRequest that chat completions run.

Content blocks become a conversation's turns: text as it is, an assistant's `tool_use` as its
call, a user's `tool_result` as a tool's result, a `thinking` block as the assistant's earlier
thinking (serving renders them in the model's own template), a user's `image` (base64, or a
data URL) as an image at its place in the text; documents are refused.
Consecutive turns of one role are merged, as Anthropic does (several chat templates insist on
alternation); system messages join the system prompt. Custom
tools are offered to the model, except those with `defer_loading` (Anthropic shows them only once
its tool search finds them, which no model here runs); Anthropic's server tools (web search,
bash, text editor, …) are not offered either. What only steers Anthropic's service or its
thinking models (`cache_control`, `service_tier`, `context_management`, `output_config.effort`)
is accepted and has no effect; `thinking` bounds (`budget_tokens`) or turns off (`disabled`) the
thinking of a model that thinks.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol import tool_calls as tools
from inference.protocol.chat import MAX_TOOLS, ChatRequest, ThinkingAsk, check_tool_choice, counted
from inference.protocol.fields import (
    OpenAIRequestSerializer,
    StopField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    optional,
    sampling_from,
)
from inference.protocol.images import MEDIA_MARKER, Image, ImageRefused, image_from_source
from inference.runtime.jobs import ChatJob

logger = logging.getLogger(__name__)

# Anthropic's own caps.
MAX_MESSAGES = 100_000
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass(frozen=True)
class MessagesRequest:
    """A Messages API request: the chat request it runs as, and what only Anthropic's answer needs."""

    chat: ChatRequest
    stop_sequences: tuple[str, ...] = ()  # a stop string not among these ended no `stop_sequence`

    @property
    def model(self) -> str | None:
        return self.chat.model

    @property
    def stream(self) -> bool:
        return self.chat.stream


# --- content blocks ------------------------------------------------------------------------------

TEXT_BLOCK = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
    "required": ["type", "text"],
}
_TEXT_CONTENT = {"oneOf": [{"type": "string"}, {"type": "array", "items": TEXT_BLOCK}]}
TOOL_USE_BLOCK = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["tool_use"]},
        "id": {"type": "string"},
        "name": {"type": "string"},
        "input": {"type": "object"},
    },
    "required": ["type", "id", "name", "input"],
}
_SOURCE = {"type": {"type": "string", "enum": ["base64", "url"]}, "media_type": {"type": "string"}}
_SOURCE |= {"data": {"type": "string"}, "url": {"type": "string"}}
_IMAGE_BLOCK = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": ["image"]}, "source": {"type": "object", "properties": _SOURCE}},
    "required": ["type", "source"],
}
_MESSAGE_BLOCKS = [
    TEXT_BLOCK,
    TOOL_USE_BLOCK,
    _IMAGE_BLOCK,
    {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["tool_result"]},
            "tool_use_id": {"type": "string"},
            "content": _TEXT_CONTENT,
            "is_error": {"type": "boolean"},
        },
        "required": ["type", "tool_use_id"],
    },
    {
        "type": "object",
        "properties": {"type": {"type": "string", "enum": ["thinking", "redacted_thinking"]}},
        "required": ["type"],
    },
]

# Each block type's fields, with the Python type each must have and whether it must be there.
_BLOCK_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    "text": {"text": (str, True)},
    "tool_use": {"id": (str, True), "name": (str, True), "input": (dict, True)},
    "tool_result": {"tool_use_id": (str, True), "is_error": (bool, False)},
    "thinking": {"thinking": (str, False)},
    "redacted_thinking": {},
    "image": {"source": (dict, True)},
}
_TYPE_WORDS = {str: "a string", dict: "an object", bool: "a boolean"}
_MEDIA = {"document": "documents"}


def _checked_blocks(data: Any, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """Content (a string, or a list of blocks of these kinds) as blocks; a tool_result's content
    becomes its `text`. Raises a ValidationError naming the block (and its field) at fault."""
    if isinstance(data, str):
        return [{"type": "text", "text": data}]
    if not isinstance(data, list):
        raise serializers.ValidationError("Expected a string or a list of content blocks.")
    blocks = []
    for index, block in enumerate(data):
        try:
            blocks.append(_checked_block(block, kinds))
        except serializers.ValidationError as error:
            raise serializers.ValidationError({index: error.detail}) from None
    return blocks


def _checked_block(block: Any, kinds: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise serializers.ValidationError("Expected a content block: an object with a string 'type'.")
    kind = block["type"]
    if kind in _MEDIA:
        raise serializers.ValidationError(
            f"{_MEDIA[kind].capitalize()} are not supported: this server's models read text only."
        )
    if kind not in kinds:
        raise serializers.ValidationError(f"A {kind!r} block is not supported here; expected {' or '.join(kinds)}.")
    for name, (expected, required) in _BLOCK_FIELDS[kind].items():
        if (name in block or required) and not isinstance(block.get(name), expected):
            raise serializers.ValidationError({name: f"Expected {_TYPE_WORDS[expected]}."})
    if kind == "image":
        return {**block, "image": _image(block["source"])}
    if kind != "tool_result":
        return block
    try:
        content = _checked_blocks(block.get("content", ""), ("text",))
    except serializers.ValidationError as error:
        raise serializers.ValidationError({"content": error.detail}) from None
    return {**block, "text": "\n".join(part["text"] for part in content)}


def _image(source: dict[str, Any]) -> Image:
    try:
        return image_from_source(source)
    except ImageRefused as refused:
        raise serializers.ValidationError(str(refused)) from None


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": _MESSAGE_BLOCKS}}]})
class MessageContentField(serializers.Field):
    """A message's content: a string, or text, tool_use, tool_result and thinking blocks."""

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        return _checked_blocks(data, tuple(_BLOCK_FIELDS))

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(_TEXT_CONTENT)
class SystemField(serializers.Field):
    """The system prompt: a string or text blocks (joined by newlines)."""

    def to_internal_value(self, data: Any) -> str:
        return "\n".join(block["text"] for block in _checked_blocks(data, ("text",)))

    def to_representation(self, value: str) -> str:
        return value


# The blocks each role's messages may hold: calls come from the assistant, their results from the
# user, and system messages (Claude Code sends them mid-conversation) are text.
_ROLE_BLOCKS = {
    "user": {"text", "image", "tool_result", "thinking", "redacted_thinking"},
    "assistant": {"text", "tool_use", "thinking", "redacted_thinking"},
    "system": {"text"},
}


class AnthropicMessageParamSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=list(_ROLE_BLOCKS))
    content = MessageContentField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        role = attrs["role"]
        for index, block in enumerate(attrs["content"]):
            if block["type"] not in _ROLE_BLOCKS[role]:
                raise serializers.ValidationError(
                    {"content": {index: f"A {block['type']!r} block cannot be in a {role} message."}}
                )
        return attrs


# --- tools ---------------------------------------------------------------------------------------

_CUSTOM_TOOL = {
    "type": "object",
    "properties": {
        "type": {"type": ["string", "null"], "enum": ["custom", None]},
        "name": {"type": "string", "pattern": _TOOL_NAME.pattern},
        "description": {"type": ["string", "null"]},
        "input_schema": {"type": "object"},
        "defer_loading": {"type": "boolean"},
    },
    "required": ["name", "input_schema"],
}
_SERVER_TOOL = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "name": {"type": "string"}},
    "required": ["type", "name"],
}


@extend_schema_field({"anyOf": [_CUSTOM_TOOL, _SERVER_TOOL]})
class ToolField(serializers.Field):
    """A custom tool (name, description, input_schema), or one of Anthropic's server tools (any
    other `type`); None for a tool not offered to the model (a server tool, or a deferred one)."""

    default_error_messages = {"invalid": "Expected a tool: an object with a 'name' (and an 'input_schema')."}

    def to_internal_value(self, data: Any) -> tools.Tool | None:
        if not isinstance(data, dict):
            self.fail("invalid")
        kind = data.get("type") or "custom"
        if not isinstance(kind, str):
            raise serializers.ValidationError({"type": "Expected a string."})
        name = data.get("name")
        if kind != "custom":
            if not isinstance(name, str):
                raise serializers.ValidationError({"name": "Expected a string."})
            logger.debug("not offering the server tool %s (%s): it runs on Anthropic's service", name, kind)
            return None
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise serializers.ValidationError({"name": "Use 1 to 128 letters, digits, underscores or dashes."})
        description = data.get("description") or ""
        if not isinstance(description, str):
            raise serializers.ValidationError({"description": "Expected a string."})
        if not isinstance(data.get("input_schema"), dict):
            raise serializers.ValidationError({"input_schema": "Expected a JSON schema object."})
        if not isinstance(deferred := data.get("defer_loading", False), bool):
            raise serializers.ValidationError({"defer_loading": "Expected a boolean."})
        if deferred:
            logger.debug("not offering the tool %s: its loading is deferred", name)
            return None
        return tools.Tool(name=name, description=description, parameters=data["input_schema"])

    def to_representation(self, value: Any) -> Any:
        return value


_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none", "tool": "function:"}


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": list(_TOOL_CHOICES)},
            "name": {"type": "string"},
            "disable_parallel_tool_use": {"type": "boolean"},
        },
        "required": ["type"],
    }
)
class AnthropicToolChoiceField(serializers.Field):
    """{"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}, as ChatRequest's
    "auto", "required", "none" or "function:<name>" (`disable_parallel_tool_use`: read by the request's
    parse)."""

    default_error_messages = {
        "invalid": (
            'Expected {{"type": "auto"}}, {{"type": "any"}}, {{"type": "none"}} or {{"type": "tool", "name": ...}}.'
        ),
    }

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, dict) or data.get("type") not in _TOOL_CHOICES:
            self.fail("invalid")
        name = data.get("name")
        if ("name" in data or data["type"] == "tool") and not isinstance(name, str):
            raise serializers.ValidationError({"name": "Expected the name of a tool."})
        if not isinstance(data.get("disable_parallel_tool_use", False), bool):
            raise serializers.ValidationError({"disable_parallel_tool_use": "Expected a boolean."})
        choice = _TOOL_CHOICES[data["type"]]
        return f"{choice}{name}" if data["type"] == "tool" else choice

    def to_representation(self, value: str) -> str:
        return value


# --- the request ---------------------------------------------------------------------------------


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "format": {
                "type": ["object", "null"],
                "properties": {"type": {"type": "string", "enum": ["json_schema"]}, "schema": {"type": "object"}},
                "required": ["type", "schema"],
            }
        },
    }
)
class OutputConfigField(serializers.Field):
    """`output_config`: its `format` (a JSON schema the answer must match) is honoured; `effort`
    steers Anthropic's thinking models only."""

    default_error_messages = {"invalid": "Expected an object."}

    def to_internal_value(self, data: Any) -> dict[str, Any] | None:
        """The answer's format as chat completions' response_format, or None."""
        if not isinstance(data, dict):
            self.fail("invalid")
        output = data.get("format")
        if output is None:
            return None
        if (
            not isinstance(output, dict)
            or output.get("type") != "json_schema"
            or not isinstance(output.get("schema"), dict)
        ):
            raise serializers.ValidationError({"format": 'Expected {"type": "json_schema", "schema": {...}}.'})
        return {"type": "json_schema", "json_schema": {"schema": output["schema"]}}

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["enabled", "disabled", "adaptive"]},
            "budget_tokens": {"type": "integer", "minimum": 0},
        },
        "required": ["type"],
    }
)
class ThinkingField(serializers.Field):
    """`thinking`: "enabled" with a `budget_tokens` bound, "disabled" (no thinking), or
    "adaptive" (the model's own way)."""

    default_error_messages = {
        "invalid": 'Expected {{"type": "enabled", "budget_tokens": N}}, or "disabled" or "adaptive".'
    }

    def to_internal_value(self, data: Any) -> ThinkingAsk:
        if not isinstance(data, dict) or data.get("type") not in ("enabled", "disabled", "adaptive"):
            self.fail("invalid")
        budget = data.get("budget_tokens")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise serializers.ValidationError({"budget_tokens": "Expected a whole number of tokens, 0 or more."})
        if data["type"] == "disabled":
            return ThinkingAsk(effort="none")
        return ThinkingAsk(budget_tokens=budget if data["type"] == "enabled" else None)

    def to_representation(self, value: Any) -> Any:
        return value


class AnthropicMetadataSerializer(serializers.Serializer):
    user_id = optional(StrictCharField, max_length=256)


class MessageTokensRequestSerializer(OpenAIRequestSerializer):
    """The body of /v1/messages/count_tokens: a message request without what only generating needs."""

    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    messages = serializers.ListField(
        child=AnthropicMessageParamSerializer(), allow_empty=False, min_length=1, max_length=MAX_MESSAGES
    )
    system = optional(SystemField)
    tools = serializers.ListField(child=ToolField(), required=False, allow_null=True, max_length=MAX_TOOLS)
    tool_choice = optional(AnthropicToolChoiceField)
    thinking = optional(ThinkingField)
    output_config = optional(OutputConfigField)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        check_tool_choice(
            attrs,
            {tool.name for tool in attrs.get("tools") or () if tool is not None},
            none_offered="'any' needs custom tools in 'tools' (deferred ones are not offered).",
            not_offered="It names no tool in 'tools' that is offered (server and deferred tools are not).",
        )
        return attrs

    @classmethod
    def parse(cls, data: Any) -> MessagesRequest:
        """The validated request; raises ValidationError (a 400) if it is not one."""
        values = cls.values(data)
        stops = tuple(values.get("stop_sequences", ()))
        chat = ChatRequest(
            model=values.get("model") or None,
            job=ChatJob(
                messages=(),
                max_tokens=values.get("max_tokens"),
                stop=stops,
                sampling=sampling_from(values),
            ),
            conversation=_conversation(values.get("system", ""), values["messages"]),
            stream=values.get("stream", False),
            tools=tuple(tool for tool in values.get("tools") or () if tool is not None),
            tool_choice=values.get("tool_choice", "auto"),
            response_format=values.get("output_config"),
            format_param="output_config.format",
            user=values.get("metadata", {}).get("user_id") or "",
            thinking=values.get("thinking") or ThinkingAsk(),
            parallel_tool_calls=not (data.get("tool_choice") or {}).get("disable_parallel_tool_use", False),
        )
        return MessagesRequest(chat=chat, stop_sequences=stops)


class MessagesRequestSerializer(MessageTokensRequestSerializer):
    """The body of /v1/messages."""

    # An upper bound: the answer stops where the context ends (Claude Code asks for 32000 always).
    max_tokens = StrictIntegerField(min_value=1, max_value=2**31 - 1)
    stop_sequences = serializers.ListField(
        child=StrictCharField(), required=False, allow_null=True, max_length=StopField.limit
    )
    temperature = optional(StrictFloatField, min_value=0.0, max_value=1.0)
    top_p = optional(StrictFloatField, min_value=0.0, max_value=1.0)
    top_k = optional(StrictIntegerField, min_value=0, max_value=2**31 - 1)
    stream = optional(StrictBooleanField)
    metadata = AnthropicMetadataSerializer(required=False, allow_null=True)


def _conversation(system: str, messages: list[dict[str, Any]]) -> tuple[tools.Turn, ...]:
    """The conversation: the system prompt first (with the conversation's system messages:
    several templates accept a system message only first), then each block as a turn,
    consecutive turns of one role merged."""
    call_names: dict[str, str] = {}
    instructions = [system] if system else []
    turns: list[tools.Turn] = []
    for number, message in enumerate(messages):
        if message["role"] == "system":
            instructions.extend(block["text"] for block in message["content"])
            continue
        for index, block in enumerate(message["content"]):
            if block["type"] == "image":
                image = replace(block["image"], at=("messages", number, "content", index))
                turns.append(tools.Turn(message["role"], MEDIA_MARKER, images=(image,)))
            elif (turn := _turn(message["role"], block, call_names)) is not None:
                turns.append(turn)
    if instructions:
        turns.insert(0, tools.Turn("system", "\n".join(instructions)))
    return counted(tools.merged_turns(turns))


def _turn(role: str, block: dict[str, Any], call_names: dict[str, str]) -> tools.Turn | None:
    """One block as a turn (None: redacted thinking, which no model here can read)."""
    kind = block["type"]
    if kind == "text":
        return tools.Turn(role, block["text"])
    if kind == "thinking":
        return tools.Turn(role, reasoning=block.get("thinking", "")) if role == "assistant" else None
    if kind == "tool_use":
        call_names[block["id"]] = block["name"]
        return tools.Turn(role, calls=(tools.ToolCall(block["id"], block["name"], json.dumps(block["input"])),))
    if kind == "tool_result":
        text = f"Error: {block['text']}" if block.get("is_error") else block["text"]
        name = call_names.get(block["tool_use_id"], block["tool_use_id"])
        return tools.Turn("tool", text, call_id=block["tool_use_id"], name=name)
    return None
