"""Anthropic's Messages API: a message is a chat completion, answered as Anthropic's message
(JSON) or its named events (SSE, with pings while the model is quiet); counting its tokens
prepares it without generating.

Usage speaks Anthropic's language: `input_tokens` are the prompt tokens not read from the cache,
`cache_read_input_tokens` those that were (so the two add up to the prompt, and to count_tokens).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from inference.errors import ApiError
from inference.protocol import MessagesRequest
from inference.protocol import tool_calls as tools
from inference.protocol.anthropic_output import error_body
from inference.protocol.sse import sse_frame
from inference.runtime.jobs import Generation
from inference.serving.answers import Ended, Text, answer_collected, answer_parts, with_heartbeat
from inference.serving.chat import chat_completion_create
from inference.serving.generate import Caller
from inference.serving.streams import sse_stream


async def message_create(*, request: MessagesRequest, caller: Caller) -> Generation:
    """Start an Anthropic message: the chat completion it is, its ids beginning with msg_."""
    return await chat_completion_create(request=request.chat, caller=caller, id_prefix="msg_")


async def message_tokens_count(*, request: MessagesRequest, caller: Caller) -> Generation:
    """Count the prompt of an Anthropic message: prepared exactly as message_create would (tools
    instruction included), on the model's worker, without generating; a recorded request too."""
    chat = replace(request.chat, job=replace(request.chat.job, count_only=True), stream=False)
    return await chat_completion_create(request=chat, caller=caller, id_prefix="msg_")


# Seconds of silence (a long prompt being read, a tool call held back) after which a stream gets
# a ping: clients and proxies give up on streams that say nothing for long.
PING_SECONDS = 5.0


def _event(kind: str, body: Mapping[str, Any]) -> bytes:
    """One SSE frame: the event's type as its name and in its data."""
    return sse_frame({"type": kind, **body}, event=kind)


def _error_event(error: ApiError) -> bytes:
    return _event("error", {"error": error_body(error.status, error.message)["error"]})


_PING = _event("ping", {})


def _usage(generation: Generation, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": generation.prompt_tokens - generation.cached_tokens,
        "cache_creation_input_tokens": 0,  # every prompt is cached without being asked to
        "cache_read_input_tokens": generation.cached_tokens,
        "output_tokens": output_tokens,
    }


def _message(
    generation: Generation, content: list[dict[str, Any]], ended: Ended | None, request: MessagesRequest
) -> dict[str, Any]:
    reason, sequence = _stop(ended, request) if ended else (None, None)
    return {
        "id": generation.id,
        "type": "message",
        "role": "assistant",
        "model": generation.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(generation, ended.finished.completion_tokens if ended else 0),
    }


def _stop(ended: Ended, request: MessagesRequest) -> tuple[str, str | None]:
    """stop_reason and stop_sequence: a stop string counts only if the request asked for it (the
    chat template's own end marker is the end of a turn)."""
    if ended.call is not None:
        return "tool_use", None
    if ended.finished.finish_reason == "length":
        return "max_tokens", None
    if ended.finished.stop_sequence in request.stop_sequences:
        return "stop_sequence", ended.finished.stop_sequence
    return "end_turn", None


def _tool_use(call: tools.ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{call.id.removeprefix('call_')}", "name": call.name, "input": arguments}


async def message_body(generation: Generation, request: MessagesRequest) -> dict[str, Any]:
    """Collect a generation into an Anthropic message (content [] when the answer is empty)."""
    text, ended = await answer_collected(generation, request.chat)
    content = [{"type": "text", "text": text}] if text else []
    if ended.call is not None:
        content.append(_tool_use(ended.call, json.loads(ended.call.arguments)))
    return _message(generation, content, ended, request)


def message_events(generation: Generation, request: MessagesRequest) -> AsyncIterator[bytes]:
    """The generation as Anthropic's SSE events: message_start, a ping, the content blocks (text
    as it comes, a tool call whole), message_delta, message_stop; a ping in every silence of
    PING_SECONDS; an `error` event (and the end) if it fails."""
    return sse_stream(generation, _events(generation, request), error_event=_error_event, done=b"")


async def _events(generation: Generation, request: MessagesRequest) -> AsyncIterator[bytes]:
    yield _event("message_start", {"message": _message(generation, [], None, request)})
    yield _PING
    index, text_open = 0, False
    parts = with_heartbeat(answer_parts(generation, request.chat), PING_SECONDS)
    async with contextlib.aclosing(parts):
        async for part in parts:
            if part is None:
                yield _PING
            elif isinstance(part, Text):
                if not text_open:
                    text_open = True
                    yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                yield _event(
                    "content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": part.text}}
                )
            else:
                if text_open:
                    yield _event("content_block_stop", {"index": index})
                    index += 1
                if part.call is not None:
                    for event in _tool_use_events(index, part.call):
                        yield event
                reason, sequence = _stop(part, request)
                yield _event(
                    "message_delta",
                    {
                        "delta": {"stop_reason": reason, "stop_sequence": sequence},
                        "usage": {"output_tokens": part.finished.completion_tokens},
                    },
                )
                yield _event("message_stop", {})


def _tool_use_events(index: int, call: tools.ToolCall) -> list[bytes]:
    """A tool call as its own block: opened with an empty input, given whole in one delta."""
    return [
        _event("content_block_start", {"index": index, "content_block": _tool_use(call, {})}),
        _event(
            "content_block_delta",
            {"index": index, "delta": {"type": "input_json_delta", "partial_json": call.arguments}},
        ),
        _event("content_block_stop", {"index": index}),
    ]


async def token_count_body(generation: Generation, request: MessagesRequest) -> dict[str, int]:
    """{"input_tokens"}: the prompt's size (a count-only generation, read to its end so that its
    record is written)."""
    async for _ in generation.events:
        pass
    return {"input_tokens": generation.prompt_tokens}
