"""A chat answer as the APIs speak of it: the model's text read into thinking, answer and tool
calls (`AnswerReading`, per choice), then as blocks (thinking, text, a call) for the APIs whose
answers are lists of them (Anthropic's content blocks, the Responses API's output items).

Text that may still be markup (a call beginning, the end of thinking) is held back by the parser
until it shows which it is; a call's name goes out as soon as it is known, its arguments as they
come.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from inference.protocol.tool_calls import ToolCall
from inference.runtime.jobs import Finished, Generation, TextDelta, TokenLogprob
from inference.serving.prompts import AnswerReading
from inference.templates import AnswerEvent, AnswerParser, CallArguments, CallEnded, CallStarted, Content, Reasoning

T = TypeVar("T")


@dataclass(frozen=True)
class Part:
    """Something one choice said (`event`), or its end (`Finished`, with its calls)."""

    index: int  # the choice
    event: AnswerEvent | Finished
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens that brought this content
    call_id: str = ""  # CallStarted: the id given to the call
    calls: tuple[ToolCall, ...] = ()  # Finished: the choice's calls


@dataclass
class _ChoiceReader:
    reading: AnswerReading
    index: int
    parser: AnswerParser | None = field(init=False)
    calls: list[ToolCall] = field(default_factory=list)
    names: dict[int, tuple[str, str]] = field(default_factory=dict)  # parser's call index -> (id, name)
    # Whitespace before anything else was said: templates put newlines before a call or thinking,
    # which are no answer; it goes out only if text follows.
    leading: str | None = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens whose text is held back

    def __post_init__(self) -> None:
        self.parser = self.reading.parser()

    def read(self, delta: TextDelta) -> list[Part]:
        if self.parser is None:
            return [Part(self.index, Content(delta.text), delta.logprobs)]
        self.logprobs += delta.logprobs
        return self._with_logprobs(self._parts(self.parser.feed(delta.text)))

    def end(self, finished: Finished) -> list[Part]:
        parts = self._parts(self.parser.finish()) if self.parser is not None else []
        if self.leading and not self.calls:
            parts.append(Part(self.index, Content(self.leading)))
        parts = self._with_logprobs(parts)
        if self.logprobs:  # of tokens that said nothing: they go out all the same
            parts.append(Part(self.index, Content(""), tuple(self.logprobs)))
        return [*parts, Part(self.index, finished, calls=tuple(self.calls))]

    def _with_logprobs(self, parts: list[Part]) -> list[Part]:
        """The parts, the logprobs held so far on the first content among them."""
        for number, part in enumerate(parts):
            if self.logprobs and isinstance(part.event, Content):
                parts[number] = replace(part, logprobs=tuple(self.logprobs))
                self.logprobs = []
        return parts

    def _parts(self, events: list[AnswerEvent]) -> list[Part]:
        parts = []
        for event in events:
            if self.leading is not None:
                if isinstance(event, Content) and not event.text.strip():
                    self.leading += event.text
                    continue
                if isinstance(event, Content):
                    event = Content(self.leading + event.text)
                self.leading = None
            call = getattr(event, "index", None)
            if call is not None and call > 0 and not self.reading.parallel:
                continue  # parallel_tool_calls: false keeps the first call only
            if isinstance(event, CallStarted):
                self.names[event.index] = (f"call_{uuid.uuid4().hex[:24]}", event.name)
                parts.append(Part(self.index, event, call_id=self.names[event.index][0]))
                continue
            if isinstance(event, CallEnded):
                call_id, name = self.names[event.index]
                self.calls.append(ToolCall(call_id, name, event.arguments))
            parts.append(Part(self.index, event))
        return parts


async def answer_parts(generation: Generation, reading: AnswerReading) -> AsyncIterator[Part]:
    """Each choice's text read as thinking, answer and calls, as it comes; then its end."""
    readers = [_ChoiceReader(reading, index) for index in range(generation.choices)]
    async for event in generation.events:
        if isinstance(event, TextDelta):
            for part in readers[event.index].read(event):
                yield part
        elif isinstance(event, Finished):
            for part in readers[event.index].end(event):
                yield part


# --- blocks ------------------------------------------------------------------------------------


@dataclass
class Block:
    """One block of an answer: its thinking, its text, or one of its calls."""

    kind: str  # "thinking", "text" or "call"
    number: int  # its place among the answer's blocks
    text: str = ""  # everything said in it so far (a call's: its arguments)
    call: ToolCall | None = None  # a call's id and name (arguments once it closes)


@dataclass(frozen=True)
class Opened:
    block: Block


@dataclass(frozen=True)
class Said:
    block: Block
    text: str


@dataclass(frozen=True)
class Closed:
    block: Block


@dataclass(frozen=True)
class Ended:
    finished: Finished
    calls: tuple[ToolCall, ...]


BlockEvent = Opened | Said | Closed | Ended
_KINDS = {Content: "text", Reasoning: "thinking"}


async def answer_blocks(generation: Generation, reading: AnswerReading) -> AsyncIterator[BlockEvent]:
    """A one-choice answer as blocks: each opened, said as it comes, closed; then its end."""
    current: Block | None = None
    numbered = 0
    async for part in answer_parts(generation, reading):
        event = part.event
        kind = "call" if isinstance(event, (CallStarted, CallArguments, CallEnded)) else _KINDS.get(type(event))
        if current is not None and (isinstance(event, (CallStarted, Finished)) or kind != current.kind):
            yield Closed(current)
            current = None
        if isinstance(event, Finished):
            yield Ended(event, part.calls)
            return
        if current is None:
            call = ToolCall(part.call_id, event.name, "") if isinstance(event, CallStarted) else None
            current, numbered = Block(kind or "text", numbered, call=call), numbered + 1
            yield Opened(current)
        if isinstance(event, CallEnded):
            current.text = event.arguments
            assert current.call is not None
            current.call = ToolCall(current.call.id, current.call.name, event.arguments)
        elif isinstance(event, (Content, Reasoning, CallArguments)) and event.text:
            current.text += event.text
            yield Said(current, event.text)


async def answer_collected(generation: Generation, reading: AnswerReading) -> tuple[list[Block], Ended]:
    """A one-choice answer's blocks, whole, and its end."""
    blocks: list[Block] = []
    async for event in answer_blocks(generation, reading):
        if isinstance(event, Closed):
            blocks.append(event.block)
        elif isinstance(event, Ended):
            return blocks, event
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
