"""Ollama's API, the request side: the bodies of /api/chat, /api/generate, /api/embed,
/api/embeddings, /api/show, /api/pull and /api/delete, validated and turned into the requests the
other APIs run (a ChatRequest, a CompletionRequest, an EmbeddingRequest).

Names: a model is listed as `NAME:latest` and found by `NAME` or `NAME:latest` (its aliases too);
the answers name it as the request did. Bodies name it in `model` (or `name`, Ollama's older word).

`options` holds the sampling settings (OpenAI's names: temperature, top_p, top_k, min_p, seed,
repeat_penalty, presence_penalty, frequency_penalty), `num_predict` (the most tokens; 0 or
negative: no limit, as Ollama) and `stop`. `num_ctx` does not resize the context: a model is
loaded once, with its configured n_ctx, for every client (serving says so when a prompt outgrows
it). What only tunes Ollama's own loader or samplers (num_gpu, num_thread, mirostat, tfs_z, …) is
accepted and logged, not applied. `format` is "json" or a JSON schema (the grammar path of chat's
response_format); `think` is true, false or a level; `images` are base64 (a data URL is taken too).

Generate's `template` is refused (a client's Go template is never evaluated), as is a `context`
(we never hand one out: send the conversation to /api/chat). A chat without messages, or a
generate without a prompt, only loads the model (or, with `keep_alive` 0, unloads it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.protocol import tool_calls as tools
from inference.protocol.chat import (
    MAX_MESSAGES,
    MAX_TOOLS,
    ChatRequest,
    ThinkingAsk,
    ToolSerializer,
    counted,
    offered_tools,
)
from inference.protocol.completions import CompletionRequest
from inference.protocol.embeddings import EmbeddingInputField, EmbeddingRequest
from inference.protocol.fields import (
    KeepAliveField,
    OpenAIRequestSerializer,
    SamplingSerializer,
    StopField,
    StrictBooleanField,
    StrictCharField,
    StrictDictField,
    StrictIntegerField,
    optional,
    sampling_from,
)
from inference.protocol.images import MEDIA_MARKER, Image, ImageRefused, image_from_base64, image_from_url
from inference.runtime.jobs import ChatJob, CompletionJob, EmbeddingJob, FillInMiddle

logger = logging.getLogger(__name__)

LATEST = ":latest"
THINK_LEVELS = ("low", "medium", "high")

# Options that tune Ollama's loader or samplers this server does not have: accepted, not applied
# (a model's load settings are config.json's; see docs/api.md).
IGNORED_OPTIONS = frozenset(
    "numa num_batch num_gpu main_gpu low_vram f16_kv logits_all vocab_only use_mmap use_mlock embedding_only "
    "num_thread num_keep tfs_z typical_p repeat_last_n mirostat mirostat_tau mirostat_eta penalize_newline".split()
)


def model_name(named: str) -> str:
    """The model (or alias) a request's name means: `NAME:latest` is `NAME`."""
    return named.removesuffix(LATEST)


class OllamaOptionsSerializer(SamplingSerializer):
    """`options`: sampling, the length and stop strings of the answer, and num_ctx (read, not applied)."""

    num_predict = optional(StrictIntegerField, min_value=-(2**31), max_value=2**31 - 1)
    stop = optional(StopField)
    num_ctx = optional(StrictIntegerField, min_value=1, max_value=2**31 - 1)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict) and (ignored := sorted(set(data) - set(self.fields))):
            unknown = [name for name in ignored if name not in IGNORED_OPTIONS]
            logger.info(
                "Ollama options not applied: %s%s",
                ", ".join(name for name in ignored if name in IGNORED_OPTIONS) or "none known",
                f" (unknown: {', '.join(unknown)[:200]})" if unknown else "",
            )
        values = super().to_internal_value(data)
        return {name: value for name, value in values.items() if value is not None}


@extend_schema_field({"type": "array", "items": {"type": "string", "description": "base64 (or a data URL)"}})
class ImagesField(serializers.Field):
    """A list of images as Ollama sends them: base64 strings (a data URL is taken too)."""

    default_error_messages = {"invalid": "Expected a list of base64-encoded images."}

    def to_internal_value(self, data: Any) -> tuple[Image, ...]:
        if not isinstance(data, list):
            self.fail("invalid")
        images = []
        for index, item in enumerate(data):
            try:
                image = image_from_url(item) if isinstance(item, str) and item.startswith("data:") else None
                images.append(replace(image or image_from_base64(item), at=(index,)))
            except ImageRefused as refused:
                raise refused.validation_error((index,)) from None
        return tuple(images)

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"oneOf": [{"type": "string", "enum": ["", "json"]}, {"type": "object"}]})
class FormatField(serializers.Field):
    """`format`: "json", or a JSON schema the answer must match; as chat's response_format."""

    default_error_messages = {"invalid": 'Expected "json" or a JSON schema object.'}

    def to_internal_value(self, data: Any) -> dict[str, Any] | None:
        if data == "":
            return None
        if data == "json":
            return {"type": "json_object"}
        if isinstance(data, dict):
            return {"type": "json_schema", "json_schema": {"schema": data}}
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field({"oneOf": [{"type": "boolean"}, {"type": "string", "enum": list(THINK_LEVELS)}]})
class ThinkField(serializers.Field):
    """`think`: true (the model's way), false (no thinking) or a level (low, medium, high)."""

    default_error_messages = {"invalid": 'Expected true, false, "low", "medium" or "high".'}

    def to_internal_value(self, data: Any) -> ThinkingAsk:
        if data is True:
            return ThinkingAsk()
        if data is False:
            return ThinkingAsk(effort="none")
        if data in THINK_LEVELS:
            return ThinkingAsk(effort=data)
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class OllamaRequestSerializer(OpenAIRequestSerializer):
    """A body that names a model, as `model` or (Ollama's older word) `name`."""

    model = StrictCharField(required=False, allow_null=True)
    name = StrictCharField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if not (attrs.get("model") or attrs.get("name")):
            raise serializers.ValidationError({"model": "model is required"})
        return attrs

    @classmethod
    def named(cls, data: Any) -> tuple[str, dict[str, Any]]:
        """The model as the body names it, and the validated fields given."""
        values = cls.values(data)
        return values.get("model") or values["name"], values


class OllamaGenerationSerializer(OllamaRequestSerializer):
    """What /api/chat and /api/generate share."""

    stream = optional(StrictBooleanField)
    options = optional(OllamaOptionsSerializer)
    format = optional(FormatField)
    keep_alive = optional(KeepAliveField)
    think = optional(ThinkField)
    logprobs = optional(StrictBooleanField)
    top_logprobs = optional(StrictIntegerField, min_value=0, max_value=20)


@dataclass(frozen=True)
class OllamaGeneration:
    """An /api/chat or /api/generate request: what it runs as (a chat, a raw completion, or
    nothing: it only loads or unloads the model), and what only Ollama's answer needs."""

    named: str  # the model as the request named it: the answers name it so
    chat_shaped: bool  # /api/chat: answers carry a `message` (else generate's `response`)
    chat: ChatRequest | None = None
    completion: CompletionRequest | None = None
    stream: bool = True
    keep_alive: float | None = None
    num_ctx: int | None = None
    logprobs: bool = False

    @property
    def model(self) -> str:
        return model_name(self.named)


def _job_options(values: dict[str, Any]) -> dict[str, Any]:
    """The GenerationJob fields of a validated chat or generate body."""
    options = values.get("options", {})
    predict = options.get("num_predict")
    return {
        "max_tokens": predict if predict is not None and predict > 0 else None,
        "stop": options.get("stop", ()),
        "sampling": sampling_from(options),
        "keep_alive": values.get("keep_alive"),
        "logprobs": values.get("top_logprobs", 0) if values.get("logprobs") else None,
    }


def _generation(named: str, values: dict[str, Any], chat_shaped: bool, **run: Any) -> OllamaGeneration:
    return OllamaGeneration(
        named=named,
        chat_shaped=chat_shaped,
        stream=values.get("stream", True),
        keep_alive=values.get("keep_alive"),
        num_ctx=values.get("options", {}).get("num_ctx"),
        logprobs=values.get("logprobs", False),
        **run,
    )


def _chat_request(named: str, values: dict[str, Any], conversation: tuple[tools.Turn, ...]) -> ChatRequest:
    return ChatRequest(
        model=model_name(named),
        job=ChatJob(messages=(), **_job_options(values)),
        conversation=counted(conversation),
        stream=values.get("stream", True),
        logprobs=values.get("logprobs", False),
        tools=offered_tools(values),
        response_format=values.get("format"),
        format_param="format",
        thinking=values.get("think") or ThinkingAsk(),
    )


# --- /api/chat -----------------------------------------------------------------------------------


class OllamaFunctionCallSerializer(serializers.Serializer):
    name = StrictCharField()
    arguments = StrictDictField()


class OllamaToolCallSerializer(serializers.Serializer):
    id = optional(StrictCharField)
    function = OllamaFunctionCallSerializer()


class OllamaMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool"])
    content = optional(StrictCharField, allow_blank=True)
    images = optional(ImagesField)
    tool_calls = serializers.ListField(child=OllamaToolCallSerializer(), required=False, allow_null=True)
    thinking = optional(StrictCharField, allow_blank=True)  # an assistant's earlier thinking
    tool_name = optional(StrictCharField, allow_blank=True)  # a tool result: the function called
    tool_call_id = optional(StrictCharField)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("images") and attrs["role"] != "user":
            raise serializers.ValidationError({"images": "Only user messages may hold images."})
        if attrs.get("tool_calls") and attrs["role"] != "assistant":
            raise serializers.ValidationError({"tool_calls": "Only assistant messages carry tool calls."})
        return attrs


class OllamaChatRequestSerializer(OllamaGenerationSerializer):
    """The body of /api/chat."""

    messages = serializers.ListField(
        child=OllamaMessageSerializer(), required=False, allow_null=True, max_length=MAX_MESSAGES
    )
    tools = serializers.ListField(child=ToolSerializer(), required=False, allow_null=True, max_length=MAX_TOOLS)

    @classmethod
    def parse(cls, data: Any) -> OllamaGeneration:
        named, values = cls.named(data)
        if not values.get("messages"):
            return _generation(named, values, True)
        return _generation(named, values, True, chat=_chat_request(named, values, _conversation(values["messages"])))


def _conversation(messages: list[dict[str, Any]]) -> tuple[tools.Turn, ...]:
    """The messages as turns: images before their message's text, calls given ids where they
    have none, each tool result answering the last call of its function."""
    calls_by_name: dict[str, str] = {}
    turns = []
    for number, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            name = message.get("tool_name") or ""
            call_id = message.get("tool_call_id") or calls_by_name.get(name) or name or f"call_{number}"
            turns.append(tools.Turn("tool", content, call_id=call_id, name=name or call_id))
            continue
        images = tuple(
            replace(image, at=("messages", number, "images", *image.at)) for image in message.get("images", ())
        )
        text = "\n".join([MEDIA_MARKER] * len(images) + ([content] if content else []))
        calls = tuple(
            tools.ToolCall(
                call.get("id") or f"call_{number}_{index}",
                call["function"]["name"],
                json.dumps(call["function"]["arguments"]),
            )
            for index, call in enumerate(message.get("tool_calls") or ())
        )
        calls_by_name.update((call.name, call.id) for call in calls)
        turns.append(tools.Turn(role, text, calls, message.get("thinking") or "", images=images))
    return tools.merged_turns(turns)


# --- /api/generate -------------------------------------------------------------------------------


class OllamaGenerateRequestSerializer(OllamaGenerationSerializer):
    """The body of /api/generate."""

    prompt = optional(StrictCharField, allow_blank=True)
    suffix = optional(StrictCharField, allow_blank=True)
    system = optional(StrictCharField, allow_blank=True)
    template = optional(StrictCharField, allow_blank=True)
    context = serializers.ListField(child=StrictIntegerField(), required=False, allow_null=True)
    raw = optional(StrictBooleanField)
    images = optional(ImagesField)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs.get("template"):
            raise serializers.ValidationError(
                {
                    "template": "'template' is not supported: a model's chat template is its own (config.json's "
                    "chat_template); Go templates sent by clients are never evaluated. Use 'raw' for a prompt as is."
                }
            )
        if attrs.get("context"):
            raise serializers.ValidationError(
                {"context": "'context' is not supported (this server hands none out): send the conversation instead."}
            )
        completion = attrs.get("raw") or attrs.get("suffix")
        for name in ("format", "images"):
            if completion and attrs.get(name):
                raise serializers.ValidationError(
                    {name: f"'{name}' with 'raw' or 'suffix' is not supported: the prompt is sent as it is."}
                )
        return attrs

    @classmethod
    def parse(cls, data: Any) -> OllamaGeneration:
        named, values = cls.named(data)
        prompt, images = values.get("prompt", ""), values.get("images", ())
        if values.get("raw") or values.get("suffix"):
            options = _job_options(values)
            suffix = values.get("suffix")
            job = CompletionJob(
                prompt=prompt, fill=FillInMiddle(prefix=prompt, suffix=suffix) if suffix else None, **options
            )
            completion = CompletionRequest(
                model=model_name(named),
                jobs=(job,),
                stream=values.get("stream", True),
                logprobs=job.logprobs is not None,
            )
            return _generation(named, values, False, completion=completion)
        if not prompt and not images:
            return _generation(named, values, False)
        turns = [tools.Turn("system", values["system"])] if values.get("system") else []
        images = tuple(replace(image, at=("images", *image.at)) for image in images)
        text = "\n".join([MEDIA_MARKER] * len(images) + ([prompt] if prompt else []))
        turns.append(tools.Turn("user", text, images=images))
        return _generation(named, values, False, chat=_chat_request(named, values, tuple(turns)))


# --- /api/embed, /api/embeddings -----------------------------------------------------------------


@dataclass(frozen=True)
class OllamaEmbedding:
    named: str
    embedding: EmbeddingRequest

    @property
    def model(self) -> str:
        return model_name(self.named)


class OllamaEmbedRequestSerializer(OllamaRequestSerializer):
    """The body of /api/embed. Inputs longer than the context are refused, `truncate` or not;
    `dimensions` is refused, as on /v1/embeddings."""

    input = EmbeddingInputField()
    truncate = optional(StrictBooleanField)
    options = optional(StrictDictField)
    keep_alive = optional(KeepAliveField)

    unsupported = {"dimensions": (None,)}
    inputs_field = "input"

    @classmethod
    def parse(cls, data: Any) -> OllamaEmbedding:
        named, values = cls.named(data)
        inputs = values[cls.inputs_field]
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        job = EmbeddingJob(inputs=inputs, keep_alive=values.get("keep_alive"))
        return OllamaEmbedding(named, EmbeddingRequest(model=model_name(named), job=job))


class OllamaEmbeddingsRequestSerializer(OllamaEmbedRequestSerializer):
    """The body of /api/embeddings (Ollama's older endpoint): one `prompt`."""

    input = None  # this endpoint's text is its prompt
    prompt = StrictCharField()
    inputs_field = "prompt"


# --- /api/show, /api/pull, /api/delete -----------------------------------------------------------


class OllamaShowRequestSerializer(OllamaRequestSerializer):
    verbose = optional(StrictBooleanField)


class OllamaDeleteRequestSerializer(OllamaRequestSerializer):
    """The body of /api/delete: the model whose file is deleted."""


@dataclass(frozen=True)
class OllamaPull:
    url: str
    stream: bool = True


class OllamaPullRequestSerializer(OllamaRequestSerializer):
    """The body of /api/pull: a GGUF file's URL (http(s), or hf://owner/repo/file.gguf) in place
    of an Ollama library name (this server has no registry of its own)."""

    insecure = optional(StrictBooleanField)
    stream = optional(StrictBooleanField)

    @classmethod
    def parse(cls, data: Any) -> OllamaPull:
        url, values = cls.named(data)
        if "://" not in url:
            raise serializers.ValidationError(
                {
                    "model": f"'{url[:100]}' is not a URL: this server pulls GGUF files by URL (https://… or "
                    "hf://owner/repo/file.gguf), not from Ollama's library."
                }
            )
        return OllamaPull(url=url, stream=values.get("stream", True))
