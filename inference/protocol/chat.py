"""Chat completions: the request (messages, tools, response formats, logprobs, n) and the
responses (one chat.completion object, or chat.completion.chunk SSE events)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol import tool_calls as tools
from inference.protocol.fields import (
    ContentField,
    GenerationRequestSerializer,
    Illustrated,
    OpenAIRequestSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictDictField,
    StrictIntegerField,
    generation_options,
    include_usage,
    optional,
)
from inference.protocol.images import ImageRefused, images_counted
from inference.runtime.jobs import ChatJob

# --- request ---------------------------------------------------------------------------------


class FunctionCallSerializer(serializers.Serializer):
    name = StrictCharField()
    arguments = StrictCharField(allow_blank=True)


class ToolCallSerializer(serializers.Serializer):
    id = StrictCharField()
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionCallSerializer()


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = ContentField(required=False, allow_null=True)
    name = StrictCharField(required=False)
    tool_calls = serializers.ListField(child=ToolCallSerializer(), required=False)
    tool_call_id = StrictCharField(required=False)
    reasoning_content = optional(StrictCharField, allow_blank=True)  # an assistant's earlier thinking

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        role = attrs["role"]
        if attrs.get("content") is None and role != "assistant":
            raise serializers.ValidationError({"content": "This field is required."})
        if role == "tool" and not attrs.get("tool_call_id"):
            raise serializers.ValidationError({"tool_call_id": "A tool message needs the id of the call it answers."})
        if isinstance(attrs.get("content"), Illustrated) and role != "user":
            raise serializers.ValidationError({"content": "Only user messages may hold images."})
        if attrs.get("tool_calls") and role != "assistant":
            raise serializers.ValidationError({"tool_calls": "Only assistant messages carry tool calls."})
        return attrs


_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FunctionSerializer(serializers.Serializer):
    name = StrictCharField()
    description = StrictCharField(required=False, allow_blank=True)
    parameters = StrictDictField(required=False)
    strict = optional(StrictBooleanField)

    def validate_name(self, name: str) -> str:
        if not _FUNCTION_NAME.match(name):
            raise serializers.ValidationError("Use 1 to 64 letters, digits, underscores or dashes.")
        return name


class ToolSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionSerializer()


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "enum": ["none", "auto", "required"]},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                },
                "required": ["type", "function"],
            },
        ]
    }
)
class ToolChoiceField(serializers.Field):
    """ "none", "auto", "required", or {"type": "function", "function": {"name": ...}}."""

    default_error_messages = {"invalid": 'Expected "none", "auto", "required" or a named function.'}

    def to_internal_value(self, data: Any) -> str:
        if data in ("none", "auto", "required"):
            return data
        function = data.get("function") if isinstance(data, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(data, dict) or data.get("type") != "function" or not isinstance(name, str):
            self.fail("invalid")
        return f"function:{name}"

    def to_representation(self, value: str) -> str:
        return value


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "properties": {"name": {"type": "string"}, "schema": {"type": "object"}}},
        },
        "required": ["type"],
    }
)
class ResponseFormatField(serializers.Field):
    """{"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}."""

    default_error_messages = {  # doubled braces: DRF formats these messages
        "invalid": 'Expected {{"type": "text"}}, {{"type": "json_object"}} or {{"type": "json_schema", '
        '"json_schema": {{"name": ..., "schema": {{...}}}}}}.',
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or data.get("type") not in ("text", "json_object", "json_schema"):
            self.fail("invalid")
        if data["type"] == "json_schema":
            spec = data.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")


@dataclass(frozen=True)
class ThinkingAsk:
    """What a request asks of a model that thinks, in any API's words."""

    effort: str | None = None  # one of REASONING_EFFORTS ("none": no thinking); None: the model's way
    budget_tokens: int | None = None  # the most tokens of thinking (Messages' thinking.budget_tokens)
    raw: bool | None = None  # reasoning_format: True ("none") leaves the thinking in the answer's text
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # chat_template_kwargs

    @classmethod
    def of(cls, values: dict[str, Any]) -> ThinkingAsk:
        """The chat completion fields (llama.cpp server's extensions too)."""
        form = values.get("reasoning_format")
        return cls(
            effort=values.get("reasoning_effort"),
            raw=None if form is None else form == "none",
            template_kwargs=values.get("chat_template_kwargs") or {},
        )


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    job: ChatJob  # the generation's options; serving renders the conversation into it
    conversation: tuple[tools.Turn, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    tools: tuple[tools.Tool, ...] = ()
    tool_choice: str = "auto"  # "none", "auto", "required" or "function:<name>"
    response_format: dict[str, Any] | None = None
    format_param: str = "response_format"  # where the request's API puts its response format
    user: str = ""
    parallel_tool_calls: bool = True  # False: at most one call per answer
    thinking: ThinkingAsk = ThinkingAsk()

    @property
    def tool_calls_possible(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def tool_call_forced(self) -> bool:
        return bool(self.tools) and (self.tool_choice == "required" or self.tool_choice.startswith("function:"))


# OpenAI's own caps: a conversation longer than this is a client bug, not a prompt.
MAX_MESSAGES = 2048
MAX_TOOLS = 128


class ChatCompletionRequestSerializer(GenerationRequestSerializer):
    messages = serializers.ListField(
        child=MessageSerializer(), allow_empty=False, min_length=1, max_length=MAX_MESSAGES
    )
    max_completion_tokens = optional(StrictIntegerField, min_value=1, max_value=2**31 - 1)
    logprobs = optional(StrictBooleanField)
    top_logprobs = optional(StrictIntegerField, min_value=0, max_value=20)
    response_format = optional(ResponseFormatField)
    tools = serializers.ListField(child=ToolSerializer(), required=False, allow_null=True, max_length=MAX_TOOLS)
    tool_choice = optional(ToolChoiceField)
    parallel_tool_calls = optional(StrictBooleanField)
    reasoning_effort = optional(serializers.ChoiceField, choices=REASONING_EFFORTS)
    reasoning_format = optional(serializers.ChoiceField, choices=["auto", "none", "deepseek", "deepseek-legacy"])
    chat_template_kwargs = optional(StrictDictField)

    unsupported = {
        "audio": (None,),
        "modalities": (None, ["text"]),
        "prediction": (None,),
        "web_search_options": (None,),
        "functions": (None, []),  # the deprecated form of tools: use `tools`
        "function_call": (None, "none", "auto"),
    }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs.get("top_logprobs") is not None and not attrs.get("logprobs"):
            raise serializers.ValidationError({"top_logprobs": "'top_logprobs' needs 'logprobs': true."})
        check_tool_choice(
            attrs,
            {tool["function"]["name"] for tool in attrs.get("tools") or ()},
            none_offered="'required' needs 'tools'.",
            not_offered="It names a function that is not in 'tools'.",
        )
        return attrs

    @classmethod
    def parse(cls, data: Any) -> ChatRequest:
        """The validated request; raises ValidationError (an OpenAI 400) if it is not one."""
        values = cls.values(data)
        options = generation_options(values)
        logprobs = values.get("logprobs", False)
        return ChatRequest(
            model=values.get("model") or None,
            job=ChatJob(messages=(), logprobs=values.get("top_logprobs", 0) if logprobs else None, **options),
            conversation=_conversation(values["messages"]),
            stream=values.get("stream", False),
            include_usage=include_usage(values),
            logprobs=logprobs,
            tools=offered_tools(values),
            tool_choice=values.get("tool_choice", "auto"),
            response_format=values.get("response_format"),
            user=values.get("user", ""),
            parallel_tool_calls=values.get("parallel_tool_calls", True),
            thinking=ThinkingAsk.of(values),
        )


def offered_tools(values: dict[str, Any]) -> tuple[tools.Tool, ...]:
    """The validated `tools` (OpenAI's function tools, as Ollama's are too) as the model is offered them."""
    return tuple(
        tools.Tool(
            name=tool["function"]["name"],
            description=tool["function"].get("description", ""),
            parameters=tool["function"].get("parameters") or {"type": "object", "properties": {}},
        )
        for tool in values.get("tools") or ()
    )


def check_tool_choice(attrs: dict[str, Any], offered: set[str], *, none_offered: str, not_offered: str) -> None:
    """Refuse a validated tool_choice (ChatRequest's strings) that forces a call no offered tool
    can answer; each API words the two cases its own way."""
    choice = attrs.get("tool_choice") or "auto"
    if choice == "required" and not offered:
        raise serializers.ValidationError({"tool_choice": none_offered})
    if choice.startswith("function:") and choice.removeprefix("function:") not in offered:
        raise serializers.ValidationError({"tool_choice": not_offered})


def _conversation(messages: list[dict[str, Any]]) -> tuple[tools.Turn, ...]:
    """The messages as turns: developer as system, consecutive turns of one role merged."""
    call_names: dict[str, str] = {}
    turns = []
    for number, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if isinstance(content, Illustrated):
            at = ("messages", number, "content")
            images = tuple(replace(image, at=(*at, image.at[0])) for image in content.images)
            turns.append(tools.Turn("user", content.text, images=images))
            continue
        if role == "tool":
            name = call_names.get(message["tool_call_id"], message["tool_call_id"])
            turns.append(tools.Turn("tool", content, call_id=message["tool_call_id"], name=name))
            continue
        calls = tuple(
            tools.ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])
            for call in message.get("tool_calls") or ()
        )
        call_names.update((call.id, call.name) for call in calls)
        reasoning = message.get("reasoning_content") or ""
        turns.append(tools.Turn("system" if role == "developer" else role, content, calls, reasoning))
    return counted(tools.merged_turns(turns))


def counted(turns: tuple[tools.Turn, ...]) -> tuple[tools.Turn, ...]:
    """The turns, unless their images are more than a request may carry (a 400 naming the first too many)."""
    try:
        images_counted(tools.images_of(turns))
    except ImageRefused as refused:
        raise refused.validation_error() from None
    return turns


# --- responses ---------------------------------------------------------------------------------


class ApplyTemplateRequestSerializer(OpenAIRequestSerializer):
    """The body of /apply-template (llama.cpp server's): a chat request's conversation and tools,
    to see the prompt its model would get."""

    model = StrictCharField(required=False, allow_null=True, allow_blank=True)
    messages = serializers.ListField(
        child=MessageSerializer(), allow_empty=False, min_length=1, max_length=MAX_MESSAGES
    )
    tools = serializers.ListField(child=ToolSerializer(), required=False, allow_null=True, max_length=MAX_TOOLS)
    tool_choice = optional(ToolChoiceField)
    reasoning_effort = optional(serializers.ChoiceField, choices=REASONING_EFFORTS)
    chat_template_kwargs = optional(StrictDictField)

    @classmethod
    def parse(cls, data: Any) -> ChatRequest:
        values = cls.values(data)
        return ChatRequest(
            model=values.get("model") or None,
            job=ChatJob(messages=(), count_only=True),
            conversation=_conversation(values["messages"]),
            tools=offered_tools(values),
            tool_choice=values.get("tool_choice", "auto"),
            thinking=ThinkingAsk.of(values),
        )
