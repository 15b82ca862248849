"""Chat completions, for any API that speaks in messages: the request's job with its tools offered
and its output constrained, started on its model; its events as OpenAI's chat completion (JSON)
or chunks (SSE)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from inference.errors import InvalidRequest
from inference.grammar import JSON_OBJECT_GRAMMAR, SchemaRefused, schema_grammar
from inference.protocol import ChatRequest
from inference.protocol.common import envelope, usage_body
from inference.protocol.sse import sse_frame
from inference.protocol.tool_calls import ToolCall
from inference.runtime.errors import PromptTooLong
from inference.runtime.jobs import ChatJob, ChatMessage, Finished, Generation, TextDelta, TokenLogprob
from inference.serving import tools
from inference.serving.generate import Caller, generation_start
from inference.serving.streams import sse_stream

logger = logging.getLogger(__name__)


async def chat_completion_create(*, request: ChatRequest, caller: Caller, id_prefix: str = "chatcmpl-") -> Generation:
    """Start a chat completion (its tools and response format applied); its id begins with
    `id_prefix`. A prompt too long with every tool described in full is tried again with the
    tools in short."""
    try:
        return await _started(request, caller, id_prefix, compact_tools=False)
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
        return await _started(request, caller, id_prefix, compact_tools=True)


async def _started(request: ChatRequest, caller: Caller, id_prefix: str, *, compact_tools: bool) -> Generation:
    job = await chat_job(request, compact_tools=compact_tools)
    return await generation_start(
        model=request.model,
        jobs=[job],
        caller=caller,
        id_prefix=id_prefix,
        stream=request.stream,
        end_user=request.user,
    )


async def chat_job(request: ChatRequest, *, compact_tools: bool = False) -> ChatJob:
    """The request's job with its tools offered in the prompt (`compact_tools`: in short) and
    its output constrained: a forced tool call or a JSON response format becomes a grammar
    (built off the event loop, within a bound); a schema the grammar cannot enforce, or too
    complex to build, is a 400 naming where it was. Counting a prompt builds no grammar."""
    job, grammar = request.job, None
    schema, param = None, request.format_param
    messages = job.messages
    if request.tool_calls_possible:
        offered = request.tools
        if request.tool_choice.startswith("function:"):
            offered = tuple(tool for tool in offered if tool.name == request.tool_choice.removeprefix("function:"))
        offer = tools.instruction(offered, required=request.tool_call_forced, compact=compact_tools)
        messages = _with_system(messages, offer.content)
        if request.tool_call_forced:
            schema, param = tools.call_schema(offered), "tools"
    if job.count_only:
        return replace(job, messages=messages)
    response_format = request.response_format or {"type": "text"}
    if schema is None and response_format["type"] == "json_object":
        grammar = JSON_OBJECT_GRAMMAR
    elif schema is None and response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema") or {}
    if schema is not None:
        try:
            grammar = await schema_grammar(schema)
        except SchemaRefused as refused:
            what = "too complex to enforce" if refused.too_complex else "this server cannot enforce"
            raise InvalidRequest(f"'{param}' has a JSON schema {what}: {refused.reason}", param=param) from None
    return replace(job, messages=messages, grammar=grammar)


def _with_system(messages: tuple[ChatMessage, ...], text: str) -> tuple[ChatMessage, ...]:
    """Messages with `text` at the start of the system message (a new one if there is none):
    several templates accept a system message only first."""
    if messages and messages[0].role == "system":
        return (ChatMessage("system", f"{text}\n\n{messages[0].content}"), *messages[1:])
    return (ChatMessage("system", text), *messages)


def logprob_entry(entry: TokenLogprob, with_top: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}
    if with_top:
        body["top_logprobs"] = [logprob_entry(alternative, with_top=False) for alternative in entry.top]
    return body


def _logprobs_body(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {"content": [logprob_entry(entry) for entry in entries], "refusal": None}


def _tool_call_body(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    body = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return body if index is None else {"index": index, **body}


@dataclass
class _Choice:
    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: Finished | None = None


async def chat_completion_body(generation: Generation, request: ChatRequest) -> dict[str, Any]:
    """Collect a generation's events into an OpenAI chat.completion object."""
    choices = [_Choice() for _ in range(generation.choices)]
    async for event in generation.events:
        choice = choices[getattr(event, "index", 0)]
        if isinstance(event, TextDelta):
            choice.texts.append(event.text)
            choice.logprobs.extend(event.logprobs)
        elif isinstance(event, Finished):
            choice.finished = event
    return {
        **envelope(generation, "chat.completion"),
        "choices": [_choice_body(index, choice, request) for index, choice in enumerate(choices)],
        "usage": usage_body(generation, [choice.finished for choice in choices if choice.finished]),
    }


def _choice_body(index: int, choice: _Choice, request: ChatRequest) -> dict[str, Any]:
    text = "".join(choice.texts)
    call = tools.parse_call(text, request.tools) if request.tool_calls_possible else None
    message: dict[str, Any] = {"role": "assistant", "content": None if call else text, "refusal": None}
    if call:
        message["tool_calls"] = [_tool_call_body(call)]
    return {
        "index": index,
        "message": message,
        "logprobs": _logprobs_body(choice.logprobs) if request.logprobs else None,
        "finish_reason": "tool_calls" if call else choice.finished.finish_reason,
    }


def chat_completion_chunks(generation: Generation, request: ChatRequest) -> AsyncIterator[bytes]:
    """The generation as OpenAI chat.completion.chunk SSE events, ending with [DONE].

    With tools, a choice whose answer begins as a JSON object is held back and sent whole, as a
    tool call if it is one.
    """
    return sse_stream(generation, _chunks(generation, request))


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

    def content(self, delta: TextDelta) -> bytes:
        if self.request.logprobs:
            return self.chunk(delta.index, {"content": delta.text}, logprobs=_logprobs_body(delta.logprobs))
        before, after = self.templates[delta.index]
        return f"{before}{json.dumps(delta.text, ensure_ascii=False)}{after}".encode()

    def ended(self, event: Finished, held: list[TextDelta]) -> list[bytes]:
        """A choice's last chunks: its held text as a tool call if it is one (else as text), then
        its finish reason."""
        call = tools.parse_call("".join(delta.text for delta in held), self.request.tools) if held else None
        if call:
            frames = [self.chunk(event.index, {"tool_calls": [_tool_call_body(call, 0)]})]
        else:
            frames = [self.content(delta) for delta in held]
        return [*frames, self.chunk(event.index, {}, finish_reason="tool_calls" if call else event.finish_reason)]

    def usage(self, finished: list[Finished]) -> bytes:
        envelope_fields = envelope(self.generation, "chat.completion.chunk")
        return sse_frame({**envelope_fields, "choices": [], "usage": usage_body(self.generation, finished)})


async def _chunks(generation: Generation, request: ChatRequest) -> AsyncIterator[bytes]:
    writer = _ChunkWriter(generation, request)
    held: dict[int, list[TextDelta]] = {}  # choices whose text might be a tool call
    sent: set[int] = set()
    finished: list[Finished] = []
    for index in range(generation.choices):
        yield writer.chunk(index, {"role": "assistant", "content": ""})
    async for event in generation.events:
        if isinstance(event, TextDelta):
            if _holding(request, held, sent, event):
                held.setdefault(event.index, []).append(event)
                continue
            sent.add(event.index)
            for delta in [*held.pop(event.index, []), event]:
                yield writer.content(delta)
        elif isinstance(event, Finished):
            finished.append(event)
            for frame in writer.ended(event, held.pop(event.index, [])):
                yield frame
    if request.include_usage:
        yield writer.usage(finished)


def _holding(request: ChatRequest, held: dict[int, list[TextDelta]], sent: set[int], event: TextDelta) -> bool:
    """Whether a choice's text is held back: it may be a tool call (a JSON object)."""
    if event.index in sent:
        return False
    return request.may_be_call("".join(delta.text for delta in held.get(event.index, [])) + event.text)
