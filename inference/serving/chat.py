"""Chat completions, for any API that speaks in messages: the request's prompt for its model with
its output constrained, started; its answer (thinking, text, tool calls) as OpenAI's chat
completion (JSON) or chunks (SSE)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from inference.errors import InvalidRequest
from inference.grammar import JSON_OBJECT_GRAMMAR, SchemaNotSupported, SchemaRefused, SchemaTooComplex, schema_grammar
from inference.protocol import ChatRequest
from inference.protocol.common import envelope, usage_body
from inference.protocol.sse import sse_frame
from inference.protocol.tool_calls import ToolCall, images_of
from inference.runtime.errors import ImageRejected, PromptTooLong
from inference.runtime.jobs import Finished, Generation, TokenLogprob
from inference.serving import tools
from inference.serving.answers import Part, answer_parts
from inference.serving.generate import Caller, generation_start
from inference.serving.image_urls import images_fetched
from inference.serving.prompts import AnswerReading, ChatPrompt, ModelFormat, chat_prompt, model_format
from inference.serving.streams import sse_stream
from inference.templates import CallArguments, CallStarted, Content, Reasoning, forced_call_grammar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartedChat:
    """A chat completion whose prompt was accepted, and how its answer is read."""

    generation: Generation
    reading: AnswerReading


async def chat_completion_create(*, request: ChatRequest, caller: Caller, id_prefix: str = "chatcmpl-") -> StartedChat:
    """Start a chat completion (its conversation rendered for its model, its tools and response
    format applied); its id begins with `id_prefix`. A prompt too long with every tool described
    in full is tried again with the tools in short."""
    request, form = await _formatted(request, caller)
    try:
        return await _started(request, form, caller, id_prefix, compact_tools=False)
    except ImageRejected as rejected:
        raise _image_refusal(rejected, request) from None
    except PromptTooLong as too_long:
        if not request.tool_calls_possible:
            raise
        # Agents offer tools by the dozen; a small model's context may hold the conversation but
        # not every tool described in full.
        logger.info(
            "the prompt with %d tools described in full is %d tokens, more than %s's context (%d): "
            "offering them in short",
            len(request.tools),
            too_long.tokens,
            too_long.model,
            too_long.n_ctx,
        )
        return await _started(request, form, caller, id_prefix, compact_tools=True)


def _image_refusal(rejected: ImageRejected, request: ChatRequest) -> InvalidRequest:
    """The runtime's refusal of an image as a 400 naming the request's part that held it."""
    images = images_of(request.conversation)
    part = images[rejected.index].part if rejected.index < len(images) else "messages"
    return InvalidRequest(f"model {rejected.model} cannot take the image at {part}: {rejected.detail}", param=part)


async def _formatted(request: ChatRequest, caller: Caller) -> tuple[ChatRequest, ModelFormat]:
    """The request with its images given by URL fetched (every API's chat comes this way), and
    its model's format, which refuses the images the model cannot see."""
    request = replace(request, conversation=await images_fetched(request.conversation))
    return request, await model_format(request.model, caller.allowed_models, request.conversation)


async def _started(
    request: ChatRequest, form: ModelFormat, caller: Caller, id_prefix: str, *, compact_tools: bool
) -> StartedChat:
    prompt = await chat_job(request, form, compact_tools=compact_tools)
    generation = await generation_start(
        model=form.model,
        jobs=[prompt.job],
        caller=caller,
        id_prefix=id_prefix,
        stream=request.stream,
        end_user=request.user,
    )
    return StartedChat(generation, prompt.reading)


async def chat_job(request: ChatRequest, form: ModelFormat, *, compact_tools: bool = False) -> ChatPrompt:
    """The request's prompt for its model (`compact_tools`: the tools in short) with its output
    constrained: a forced tool call (in the template's own markup where it has one) or a JSON
    response format becomes a grammar (built off the event loop, within a bound); a schema the
    grammar cannot enforce, or too complex to build, is a 400 naming where it was. Counting a
    prompt builds no grammar."""
    prompt = await chat_prompt(request, form, compact_tools=compact_tools)
    if prompt.job.count_only:
        return prompt
    grammar, schema, param = None, None, request.format_param
    response_format = request.response_format or {"type": "text"}
    try:
        if request.tool_call_forced and prompt.native_calls:
            grammar = await asyncio.to_thread(
                forced_call_grammar,
                prompt.reading.markup,
                prompt.reading.tools,
                parallel=request.parallel_tool_calls,
                thinking_open=prompt.reading.thinking_open,
            )
        elif request.tool_call_forced:
            schema, param = tools.call_schema(prompt.offered), "tools"
        elif response_format["type"] == "json_object":
            grammar = JSON_OBJECT_GRAMMAR
        elif response_format["type"] == "json_schema":
            schema = response_format["json_schema"].get("schema") or {}
        if schema is not None:
            grammar = await schema_grammar(schema)
    except (SchemaRefused, SchemaNotSupported, SchemaTooComplex) as refused:
        too_complex = isinstance(refused, SchemaTooComplex) or getattr(refused, "too_complex", False)
        what = "too complex to enforce" if too_complex else "this server cannot enforce"
        param = "tools" if request.tool_call_forced else param
        raise InvalidRequest(f"'{param}' has a JSON schema {what}: {refused}", param=param) from None
    return replace(prompt, job=replace(prompt.job, grammar=grammar))


def logprob_entry(entry: TokenLogprob, with_top: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}
    if with_top:
        body["top_logprobs"] = [logprob_entry(alternative, with_top=False) for alternative in entry.top]
    return body


def _logprobs_body(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {"content": [logprob_entry(entry) for entry in entries], "refusal": None}


def _tool_call_body(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


@dataclass
class _Choice:
    texts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: Finished | None = None
    calls: tuple[ToolCall, ...] = ()


async def chat_completion_body(started: StartedChat, request: ChatRequest) -> dict[str, Any]:
    """Collect a generation's answers into an OpenAI chat.completion object."""
    generation = started.generation
    choices = [_Choice() for _ in range(generation.choices)]
    async for part in answer_parts(generation, started.reading):
        choice, event = choices[part.index], part.event
        choice.logprobs.extend(part.logprobs)
        if isinstance(event, Content):
            choice.texts.append(event.text)
        elif isinstance(event, Reasoning):
            choice.thoughts.append(event.text)
        elif isinstance(event, Finished):
            choice.finished, choice.calls = event, part.calls
    return {
        **envelope(generation, "chat.completion"),
        "choices": [_choice_body(index, choice, request) for index, choice in enumerate(choices)],
        "usage": usage_body(generation, [choice.finished for choice in choices if choice.finished]),
    }


def _choice_body(index: int, choice: _Choice, request: ChatRequest) -> dict[str, Any]:
    text = "".join(choice.texts)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if choice.calls else ""), "refusal": None}
    if choice.thoughts:
        message["reasoning_content"] = "".join(choice.thoughts)
    if choice.calls:
        message["tool_calls"] = [_tool_call_body(call) for call in choice.calls]
    assert choice.finished is not None
    return {
        "index": index,
        "message": message,
        "logprobs": _logprobs_body(choice.logprobs) if request.logprobs else None,
        "finish_reason": "tool_calls" if choice.calls else choice.finished.finish_reason,
    }


def chat_completion_chunks(started: StartedChat, request: ChatRequest) -> AsyncIterator[bytes]:
    """The generation as OpenAI chat.completion.chunk SSE events, ending with [DONE]: thinking as
    `reasoning_content`, the answer as `content`, each tool call opened with its id and name and
    its arguments as they come."""
    return sse_stream(started.generation, _chunks(started, request))


class _ChunkWriter:
    """A chat completion's chunks, as SSE frames. Plain content chunks differ only in their text:
    the rest is encoded once per choice (per-token JSON encoding was a sixth of the event loop's
    work per token)."""

    def __init__(self, generation: Generation, request: ChatRequest) -> None:
        self.generation, self.request = generation, request
        self.usage_field = {"usage": None} if request.include_usage else {}
        placeholder = json.dumps("\x00")
        self.templates = [
            self.chunk(index, {"content": "\x00"}).decode().split(placeholder) for index in range(generation.choices)
        ]

    def chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse_frame(
            {**envelope(self.generation, "chat.completion.chunk"), "choices": [choice], **self.usage_field}
        )

    def content(self, index: int, text: str, logprobs: tuple[TokenLogprob, ...]) -> bytes:
        if self.request.logprobs:
            return self.chunk(index, {"content": text}, logprobs=_logprobs_body(logprobs))
        before, after = self.templates[index]
        return f"{before}{json.dumps(text, ensure_ascii=False)}{after}".encode()

    def part(self, part: Part) -> bytes | None:
        """The chunk of one part of a choice's answer (None: nothing to send)."""
        event = part.event
        if isinstance(event, Content):
            return self.content(part.index, event.text, part.logprobs) if event.text or part.logprobs else None
        if isinstance(event, Reasoning):
            return self.chunk(part.index, {"reasoning_content": event.text}) if event.text else None
        if isinstance(event, CallStarted):
            call = {"id": part.call_id, "type": "function", "function": {"name": event.name, "arguments": ""}}
            return self.chunk(part.index, {"tool_calls": [{"index": event.index, **call}]})
        if isinstance(event, CallArguments):
            call = {"index": event.index, "function": {"arguments": event.text}}
            return self.chunk(part.index, {"tool_calls": [call]}) if event.text else None
        if isinstance(event, Finished):
            return self.chunk(part.index, {}, finish_reason="tool_calls" if part.calls else event.finish_reason)
        return None  # CallEnded: its arguments went out as they came

    def usage(self, finished: list[Finished]) -> bytes:
        envelope_fields = envelope(self.generation, "chat.completion.chunk")
        return sse_frame({**envelope_fields, "choices": [], "usage": usage_body(self.generation, finished)})


async def _chunks(started: StartedChat, request: ChatRequest) -> AsyncIterator[bytes]:
    writer = _ChunkWriter(started.generation, request)
    finished: list[Finished] = []
    for index in range(started.generation.choices):
        yield writer.chunk(index, {"role": "assistant", "content": ""})
    async for part in answer_parts(started.generation, started.reading):
        if isinstance(part.event, Finished):
            finished.append(part.event)
        frame = writer.part(part)
        if frame is not None:
            yield frame
    if request.include_usage:
        yield writer.usage(finished)


@dataclass(frozen=True)
class AppliedTemplate:
    """A conversation rendered for its model (counted on the model, for the record)."""

    generation: Generation
    prompt: str


async def template_apply(*, request: ChatRequest, caller: Caller) -> AppliedTemplate:
    """The prompt the model would get for this conversation (/apply-template), generation
    prompt included and without the BOS text its tokenizer adds."""
    request, form = await _formatted(request, caller)
    if form.template is None:
        raise InvalidRequest(
            f"model {form.model} is rendered by llama-cpp-python's chat_format, not a template", param="model"
        )
    prompt = await chat_prompt(request, form)
    generation = await generation_start(model=form.model, jobs=[prompt.job], caller=caller, id_prefix="tmpl-")
    return AppliedTemplate(generation, prompt.job.prompt_text or "")


async def applied_template_body(applied: AppliedTemplate, request: ChatRequest) -> dict[str, str]:
    async for _ in applied.generation.events:  # read to its end, so that its record is written
        pass
    return {"prompt": applied.prompt}
