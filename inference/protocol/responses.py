"""The OpenAI Responses API request (/v1/responses): input items, instructions, tools, text format.

Input items are normalised and read as turns by `responses_input`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol import tool_calls as tools
from inference.protocol.chat import (
    MAX_TOOLS,
    REASONING_EFFORTS,
    ChatRequest,
    ThinkingAsk,
    check_tool_choice,
    counted,
)
from inference.protocol.fields import (
    KeepAliveField,
    OpenAIRequestSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictDictField,
    StrictFloatField,
    StrictIntegerField,
    optional,
    sampling_from,
)
from inference.protocol.responses_input import InputField, conversation_turns
from inference.runtime.jobs import ChatJob

logger = logging.getLogger(__name__)

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


# --- tools -------------------------------------------------------------------------------------


@extend_schema_field(
    {"type": "array", "items": {"type": "object", "properties": {"type": {"type": "string"}}, "required": ["type"]}}
)
class ToolsField(serializers.Field):
    """Function tools, and namespaces of them (offered by their own names); hosted tools this
    server cannot run (web_search, file_search, …) are kept for the echo but not offered."""

    default_error_messages = {
        "invalid": "Expected a list of tool objects, each with a 'type'.",
        "tool": "Tool {index}: {problem}",
        "too_many": f"At most {MAX_TOOLS} functions.",
    }

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, list) or not all(
            isinstance(tool, dict) and isinstance(tool.get("type"), str) for tool in data
        ):
            self.fail("invalid")
        for index, tool in enumerate(data):
            try:
                _functions_of(tool)
            except ValueError as problem:
                self.fail("tool", index=index, problem=problem)
        if len(offered_functions(data)) > MAX_TOOLS:
            self.fail("too_many")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


def _function(tool: dict[str, Any]) -> tools.Tool:
    name = tool.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise ValueError("a function needs a 'name' of 1 to 128 letters, digits, '_', '-' or '.'.")
    description = tool.get("description") or ""
    parameters = tool.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(description, str) or not isinstance(parameters, dict):
        raise ValueError("a function's 'description' must be a string and its 'parameters' an object.")
    return tools.Tool(name=name, description=description, parameters=parameters)


def _functions_of(tool: dict[str, Any]) -> list[tools.Tool]:
    if tool["type"] == "function":
        return [_function(tool)]
    if tool["type"] == "namespace":
        members = tool.get("tools")
        if not isinstance(members, list) or not all(isinstance(member, dict) for member in members):
            raise ValueError("a namespace needs a list of function 'tools'.")
        return [_function(member) for member in members if member.get("type", "function") == "function"]
    logger.debug("not offering the hosted tool %s to the model: this server cannot run it", tool["type"])
    return []


def offered_functions(tool_list: list[dict[str, Any]]) -> tuple[tools.Tool, ...]:
    return tuple(function for tool in tool_list for function in _functions_of(tool))


def namespaces_of(tool_list: list[dict[str, Any]]) -> dict[str, str]:
    """The namespace of each function offered inside one (a call to it names its namespace)."""
    return {
        function.name: tool["name"]
        for tool in tool_list
        if tool["type"] == "namespace" and isinstance(tool.get("name"), str)
        for function in _functions_of(tool)
    }


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "enum": ["none", "auto", "required"]},
            {
                "type": "object",
                "properties": {"type": {"type": "string"}, "name": {"type": "string"}},
                "required": ["type"],
            },
        ]
    }
)
class ResponseToolChoiceField(serializers.Field):
    """ "none", "auto", "required" or {"type": "function", "name": ...}; a hosted tool's choice
    (which this server cannot run) counts as "auto"."""

    default_error_messages = {"invalid": 'Expected "none", "auto", "required" or {{"type": "function", "name": ...}}.'}

    def to_internal_value(self, data: Any) -> str:
        if data in ("none", "auto", "required"):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.fail("invalid")
        if data["type"] == "function":
            if not isinstance(data.get("name"), str):
                self.fail("invalid")
            return f"function:{data['name']}"
        return "auto"

    def to_representation(self, value: Any) -> Any:
        return value


# --- the request -------------------------------------------------------------------------------


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "format": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                    "schema": {"type": "object"},
                },
                "required": ["type"],
            },
            "verbosity": {"type": "string"},
        },
    }
)
class TextField(serializers.Field):
    """{"format": {"type": "text" | "json_object" | "json_schema", ...}}: as chat's response_format."""

    default_error_messages = {
        "invalid": 'Expected {{"format": {{"type": "text"}}}}, {{"format": {{"type": "json_object"}}}} or '
        '{{"format": {{"type": "json_schema", "name": ..., "schema": {{...}}}}}}.',
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("invalid")
        text_format = data.get("format", {"type": "text"})
        if not isinstance(text_format, dict) or text_format.get("type") not in ("text", "json_object", "json_schema"):
            self.fail("invalid")
        if text_format["type"] == "json_schema" and not isinstance(text_format.get("schema"), dict):
            self.fail("invalid")
        return {**data, "format": text_format}

    def to_representation(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class ResponseRequest:
    chat: ChatRequest  # messages from the instructions and this input only; see `continuing`
    input: tuple[dict[str, Any], ...]
    instructions: str | None
    previous_response_id: str | None
    store: bool
    echo: dict[str, Any]  # the request's settings, as the response object repeats them
    namespaces: dict[str, str] = field(default_factory=dict)  # function name → its namespace

    @property
    def model(self) -> str | None:
        return self.chat.model

    @property
    def stream(self) -> bool:
        return self.chat.stream

    def continuing(self, history: list[dict[str, Any]]) -> ChatRequest:
        """The chat request with a stored conversation's items before this input."""
        return replace(self.chat, conversation=_conversation(self.instructions, [*history, *self.input]))


def _conversation(instructions: str | None, items: list[dict[str, Any]]) -> tuple[tools.Turn, ...]:
    system = [tools.Turn("system", instructions)] if instructions else []
    return counted(tools.merged_turns([*system, *conversation_turns(items)]))


class ResponseRequestSerializer(OpenAIRequestSerializer):
    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    input = InputField()
    instructions = optional(StrictCharField, allow_blank=True)
    max_output_tokens = optional(StrictIntegerField, min_value=1, max_value=2**31 - 1)
    temperature = optional(StrictFloatField, min_value=0.0, max_value=2.0)
    top_p = optional(StrictFloatField, min_value=0.0, max_value=1.0)
    top_k = optional(StrictIntegerField, min_value=0, max_value=2**31 - 1)
    seed = optional(StrictIntegerField, min_value=-(2**63), max_value=2**64 - 1)
    tools = optional(ToolsField)
    tool_choice = optional(ResponseToolChoiceField)
    parallel_tool_calls = optional(StrictBooleanField)
    max_tool_calls = optional(StrictIntegerField, min_value=1)
    text = optional(TextField)
    stream = optional(StrictBooleanField)
    stream_options = optional(StrictDictField)
    store = optional(StrictBooleanField)
    previous_response_id = optional(StrictCharField, max_length=64)
    metadata = optional(StrictDictField, child=StrictCharField(max_length=512, allow_blank=True))
    user = optional(StrictCharField, max_length=256)
    safety_identifier = optional(StrictCharField, max_length=256)
    prompt_cache_key = optional(StrictCharField, max_length=256)
    reasoning = optional(StrictDictField)
    include = optional(serializers.ListField, child=StrictCharField())
    truncation = optional(serializers.ChoiceField, choices=["auto", "disabled"])
    service_tier = optional(StrictCharField)
    client_metadata = optional(StrictDictField)
    keep_alive = optional(KeepAliveField)

    unsupported = {
        "background": (None, False),
        "conversation": (None,),
        "prompt": (None,),
        "top_logprobs": (None, 0),
    }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if len(attrs.get("metadata") or {}) > 16:
            raise serializers.ValidationError({"metadata": "At most 16 keys."})
        effort = (attrs.get("reasoning") or {}).get("effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            raise serializers.ValidationError({"reasoning": f"'effort' must be one of {', '.join(REASONING_EFFORTS)}."})
        check_tool_choice(
            attrs,
            {function.name for function in offered_functions(attrs.get("tools") or [])},
            none_offered="'required' needs function 'tools'.",
            not_offered="It names a function that is not in 'tools'.",
        )
        return attrs

    @classmethod
    def parse(cls, data: Any) -> ResponseRequest:
        """The validated request; raises ValidationError (an OpenAI 400) if it is not one."""
        values = cls.values(data)
        tool_list = values.get("tools") or []
        text = values.get("text", {"format": {"type": "text"}})
        text_format = text["format"]
        response_format = (
            {
                "type": "json_schema",
                "json_schema": {"name": text_format.get("name", ""), "schema": text_format["schema"]},
            }
            if text_format["type"] == "json_schema"
            else {"type": text_format["type"]}
        )
        chat = ChatRequest(
            model=values.get("model") or None,
            job=ChatJob(
                messages=(),
                max_tokens=values.get("max_output_tokens"),
                sampling=sampling_from(values),
                keep_alive=values.get("keep_alive"),
            ),
            conversation=_conversation(values.get("instructions"), list(values["input"])),
            stream=values.get("stream", False),
            tools=offered_functions(tool_list),
            tool_choice=values.get("tool_choice", "auto"),
            response_format=response_format,
            format_param="text.format",
            user=values.get("safety_identifier") or values.get("user", ""),
            parallel_tool_calls=values.get("parallel_tool_calls", True),
            thinking=ThinkingAsk(effort=values.get("reasoning", {}).get("effort")),
        )
        echo = {
            "instructions": values.get("instructions"),
            "max_output_tokens": values.get("max_output_tokens"),
            "metadata": values.get("metadata", {}),
            "parallel_tool_calls": values.get("parallel_tool_calls", True),
            "previous_response_id": values.get("previous_response_id"),
            "prompt_cache_key": values.get("prompt_cache_key"),
            "reasoning": {"effort": None, "summary": None, **values.get("reasoning", {})},
            "safety_identifier": values.get("safety_identifier"),
            "service_tier": "default",
            "store": values.get("store", True),
            "text": text,
            "tool_choice": data.get("tool_choice") or "auto",
            "tools": tool_list,
            "truncation": values.get("truncation", "disabled"),
            "user": values.get("user"),
        }
        return ResponseRequest(
            chat=chat,
            input=values["input"],
            instructions=values.get("instructions"),
            previous_response_id=values.get("previous_response_id"),
            store=values.get("store", True),
            echo=echo,
            namespaces=namespaces_of(tool_list),
        )
