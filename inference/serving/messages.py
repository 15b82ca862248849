"""Anthropic's Messages API: a message is a chat completion, answered as Anthropic's message
(JSON) or its named events (SSE, with pings while the model is quiet); counting its tokens
prepares it without generating.

Usage speaks Anthropic's language: `input_tokens` are the prompt tokens not read from the cache,
`cache_read_input_tokens` those that were (so the two add up to the prompt, and to count_tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from inference.errors import ApiError
from inference.protocol import MessagesRequest
from inference.protocol.anthropic_output import error_body
from inference.protocol.sse import sse_frame
from inference.runtime.jobs import Generation
from inference.serving.answers import (
    Block,
    BlockEvent,
    Closed,
    Ended,
    Opened,
    Said,
    answer_blocks,
    answer_collected,
    with_heartbeat,
)
from inference.serving.chat import StartedChat, chat_completion_create
from inference.serving.generate import Caller
from inference.serving.streams import sse_stream


async def message_create(*, request: MessagesRequest, caller: Caller) -> StartedChat:
    """Start an Anthropic message: the chat completion it is, its ids beginning with msg_."""
    return await chat_completion_create(request=request.chat, caller=caller, id_prefix="msg_")


async def message_tokens_count(*, request: MessagesRequest, caller: Caller) -> StartedChat:
    """Count the prompt of an Anthropic message: prepared exactly as message_create would (tools
    included), on the model's worker, without generating; a recorded request too."""
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
    if ended.calls:
        return "tool_use", None
    if ended.finished.finish_reason == "length":
        return "max_tokens", None
    if ended.finished.stop_sequence in request.stop_sequences:
        return "stop_sequence", ended.finished.stop_sequence
    return "end_turn", None


def _signature(thinking: str) -> str:
    """A thinking block's `signature`: Anthropic's proves the thinking unaltered; ours is its
    digest (clients send it back, and no model here reads it)."""
    return hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()


def _content_block(block: Block, *, whole: bool) -> dict[str, Any]:
    """A block as Anthropic's content block: whole, or (`whole` False) as a stream opens it."""
    if block.kind == "thinking":
        return {
            "type": "thinking",
            "thinking": block.text if whole else "",
            "signature": _signature(block.text) if whole else "",
        }
    if block.kind == "call":
        assert block.call is not None
        arguments = json.loads(block.text or "{}") if whole else {}
        return {
            "type": "tool_use",
            "id": f"toolu_{block.call.id.removeprefix('call_')}",
            "name": block.call.name,
            "input": arguments,
        }
    return {"type": "text", "text": block.text if whole else ""}


_DELTAS = {
    "thinking": ("thinking_delta", "thinking"),
    "text": ("text_delta", "text"),
    "call": ("input_json_delta", "partial_json"),
}


async def message_body(started: StartedChat, request: MessagesRequest) -> dict[str, Any]:
    """Collect a generation into an Anthropic message (content [] when the answer is empty)."""
    blocks, ended = await answer_collected(started.generation, started.reading)
    content = [_content_block(block, whole=True) for block in blocks if block.text or block.kind == "call"]
    return _message(started.generation, content, ended, request)


def message_events(started: StartedChat, request: MessagesRequest) -> AsyncIterator[bytes]:
    """The generation as Anthropic's SSE events: message_start, a ping, the content blocks
    (thinking, text and tool calls as they come), message_delta, message_stop; a ping in every
    silence of PING_SECONDS; an `error` event (and the end) if it fails."""
    return sse_stream(started.generation, _events(started, request), error_event=_error_event, done=b"")


async def _events(started: StartedChat, request: MessagesRequest) -> AsyncIterator[bytes]:
    generation = started.generation
    yield _event("message_start", {"message": _message(generation, [], None, request)})
    yield _PING
    events = with_heartbeat(answer_blocks(generation, started.reading), PING_SECONDS)
    async with contextlib.aclosing(events):
        async for event in events:
            for frame in _frames(event, request):
                yield frame


def _frames(event: BlockEvent | None, request: MessagesRequest) -> list[bytes]:
    if event is None:
        return [_PING]
    if isinstance(event, Opened):
        block = event.block
        return [
            _event("content_block_start", {"index": block.number, "content_block": _content_block(block, whole=False)})
        ]
    if isinstance(event, Said):
        kind, key = _DELTAS[event.block.kind]
        return [_event("content_block_delta", {"index": event.block.number, "delta": {"type": kind, key: event.text}})]
    if isinstance(event, Closed):
        frames = []
        if event.block.kind == "thinking":
            signature = {"type": "signature_delta", "signature": _signature(event.block.text)}
            frames.append(_event("content_block_delta", {"index": event.block.number, "delta": signature}))
        return [*frames, _event("content_block_stop", {"index": event.block.number})]
    reason, sequence = _stop(event, request)
    delta = {
        "delta": {"stop_reason": reason, "stop_sequence": sequence},
        "usage": {"output_tokens": event.finished.completion_tokens},
    }
    return [_event("message_delta", delta), _event("message_stop", {})]


async def token_count_body(started: StartedChat, request: MessagesRequest) -> dict[str, int]:
    """{"input_tokens"}: the prompt's size (a count-only generation, read to its end so that its
    record is written)."""
    async for _ in started.generation.events:
        pass
    return {"input_tokens": started.generation.prompt_tokens}
