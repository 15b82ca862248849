"""One answer of a conversation, as the agent APIs (Anthropic Messages, OpenAI Responses) speak
of it: text as it is generated, then how it ended (a tool call, or not).

With tools offered, text that may still turn out to be a call (a JSON object) is held back and
either made a call or sent as text when the answer ends (`ChatRequest.may_be_call`, as chat
completions do).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from inference.protocol import tool_calls as tools
from inference.protocol.chat import ChatRequest
from inference.runtime.jobs import Finished, Generation, TextDelta
from inference.serving.tools import parse_call

T = TypeVar("T")


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Ended:
    finished: Finished
    call: tools.ToolCall | None = None  # the answer was this call (its text was never sent)


async def answer_parts(generation: Generation, request: ChatRequest) -> AsyncIterator[Text | Ended]:
    """The text of a one-choice generation as it comes (held back while it may be a call), then
    its end."""
    held: list[str] = []
    holding = True
    async for event in generation.events:
        if isinstance(event, TextDelta):
            if holding and request.may_be_call("".join(held) + event.text):
                held.append(event.text)
                continue
            holding = False
            text, held = "".join(held) + event.text, []
            yield Text(text)
        elif isinstance(event, Finished):
            text = "".join(held)
            call = parse_call(text, request.tools) if text else None
            if text and call is None:
                yield Text(text)
            yield Ended(event, call)


async def answer_collected(generation: Generation, request: ChatRequest) -> tuple[str, Ended]:
    """The whole text of a one-choice generation (empty if it was a call), and its end."""
    texts: list[str] = []
    async for part in answer_parts(generation, request):
        if isinstance(part, Text):
            texts.append(part.text)
        else:
            return "".join(texts), part
    raise AssertionError("a generation ends with Finished")


async def with_heartbeat(items: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """The items, and None whenever `interval` seconds pass without one (for keep-alive events
    while a long prompt is processed). Closing this closes `items`."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await items.aclose()  # type: ignore[attr-defined]  # an async generator, typed AsyncIterator (no aclose)
