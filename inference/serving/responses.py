"""OpenAI's Responses API: a response is a chat completion that may continue a stored one, and
with `store` is kept when it finishes; answered as a response object (JSON) or its typed
events (SSE, each with a `sequence_number`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from inference.errors import ApiError
from inference.protocol import tool_calls as tools
from inference.protocol.responses import ResponseRequest
from inference.protocol.responses_input import item_id
from inference.protocol.sse import sse_frame
from inference.runtime.jobs import Generation
from inference.services.responses import response_save, stored_response
from inference.serving.answers import Block, Closed, Ended, Opened, Said, answer_blocks, answer_collected
from inference.serving.chat import chat_completion_create
from inference.serving.generate import Caller
from inference.serving.prompts import AnswerReading
from inference.serving.streams import sse_stream


async def response_create(*, request: ResponseRequest, caller: Caller) -> StartedResponse:
    """Start a Responses API response: a stored conversation it continues comes before its
    input (404 if there is none under this key); with `store`, the finished response is kept."""
    history: list[dict[str, Any]] = []
    chat = request.chat
    if request.previous_response_id:
        previous = await stored_response(
            request.previous_response_id, api_key=caller.api_key, param="previous_response_id"
        )
        history = previous.conversation
        chat = request.continuing(history)
    started = await chat_completion_create(request=chat, caller=caller, id_prefix="resp_")
    save = None
    if request.store:

        async def save(body: dict[str, Any]) -> None:
            await response_save(body=body, request=request, history=history, api_key=caller.api_key)

    return StartedResponse(started.generation, started.reading, request, save)


@dataclass
class StartedResponse:
    """A response whose prompt was accepted; `save` keeps the finished object (store: true)."""

    generation: Generation
    reading: AnswerReading
    request: ResponseRequest
    save: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    def envelope(self, status: str, output: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """The response object, as OpenAI returns it (the request's settings repeated)."""
        return {
            "id": self.generation.id,
            "object": "response",
            "created_at": self.generation.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "model": self.generation.model,
            "output": output,
            "usage": None,
            **self.request.echo,
            # what it ran with: the request's, else the model's defaults
            "temperature": self.generation.sampling.temperature,
            "top_p": self.generation.sampling.top_p,
            **fields,
        }

    async def finished(self, blocks: list[Block], ended: Ended, ids: dict[int, str]) -> dict[str, Any]:
        """The final object (kept, if stored), from the answer's blocks and how it ended."""
        generation, finished = self.generation, ended.finished
        output = [self.item(block, ids.get(block.number) or _new_id(block), "completed") for block in blocks]
        if not any(block.kind == "text" for block in blocks) and not ended.calls:
            output.append(_message(item_id("msg"), "", "completed"))
        incomplete = finished.finish_reason == "length" and not ended.calls
        body = self.envelope(
            "incomplete" if incomplete else "completed",
            output,
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            usage={
                "input_tokens": generation.prompt_tokens,
                "input_tokens_details": {"cached_tokens": generation.cached_tokens},
                "output_tokens": finished.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": finished.reasoning_tokens},
                "total_tokens": generation.prompt_tokens + finished.completion_tokens,
            },
        )
        if self.save is not None:
            await self.save(body)
        return body

    def item(self, block: Block, item_id_: str, status: str, *, whole: bool = True) -> dict[str, Any]:
        """A block as its output item: whole, or (`whole` False) as a stream opens it."""
        text = block.text if whole else ""
        if block.kind == "thinking":
            return _reasoning(item_id_, text if whole else None, status)
        if block.kind == "call":
            assert block.call is not None
            namespace = self.request.namespaces.get(block.call.name)
            return _call(item_id_, block.call, text, status, namespace)
        return _message(item_id_, text if whole else None, status)


_ID_PREFIXES = {"thinking": "rs", "text": "msg", "call": "fc"}


def _new_id(block: Block) -> str:
    return item_id(_ID_PREFIXES[block.kind])


def _text_part(text: str, kind: str = "output_text") -> dict[str, Any]:
    if kind == "reasoning_text":
        return {"type": kind, "text": text}
    return {"type": kind, "text": text, "annotations": [], "logprobs": []}


def _message(message_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"id": message_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _reasoning(reasoning_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text, "reasoning_text")]
    return {"id": reasoning_id, "type": "reasoning", "status": status, "summary": [], "content": content}


def _call(call_id: str, call: tools.ToolCall, arguments: str, status: str, namespace: str | None) -> dict[str, Any]:
    item = {
        "id": call_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
    }
    return item if namespace is None else {**item, "namespace": namespace}


async def response_body(started: StartedResponse, request: ResponseRequest) -> dict[str, Any]:
    blocks, ended = await answer_collected(started.generation, started.reading)
    return await started.finished(blocks, ended, {})


def response_events(started: StartedResponse, request: ResponseRequest) -> AsyncIterator[bytes]:
    """The response as typed SSE events: created, in_progress, the output items as they form
    (thinking, text, calls), then completed (or incomplete); a failure mid-way is a
    `response.failed` event."""
    events = _Events(started)
    return sse_stream(started.generation, events.stream(), error_event=events.failed, done=b"")


# Each kind of block's events while it streams: (part type or None, delta event, done event, done field)
_STREAMED = {
    "thinking": ("reasoning_text", "response.reasoning_text.delta", "response.reasoning_text.done", "text"),
    "text": ("output_text", "response.output_text.delta", "response.output_text.done", "text"),
    "call": (None, "response.function_call_arguments.delta", "response.function_call_arguments.done", "arguments"),
}


class _Events:
    def __init__(self, started: StartedResponse) -> None:
        self.started = started
        self.sequence = 0
        self.ids: dict[int, str] = {}  # block number -> its item's id
        self.blocks: list[Block] = []

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_frame(payload, event=kind)

    def failed(self, error: ApiError) -> bytes:
        failure = {"code": error.code or error.type, "message": error.message}
        return self.event("response.failed", response=self.started.envelope("failed", [], error=failure))

    def _where(self, block: Block) -> dict[str, Any]:
        where = {"item_id": self.ids[block.number], "output_index": block.number}
        return where if block.kind == "call" else {**where, "content_index": 0}

    def opened(self, block: Block) -> list[bytes]:
        self.ids[block.number] = _new_id(block)
        item = self.started.item(block, self.ids[block.number], "in_progress", whole=False)
        frames = [self.event("response.output_item.added", output_index=block.number, item=item)]
        part_type = _STREAMED[block.kind][0]
        if part_type is not None:
            frames.append(
                self.event("response.content_part.added", **self._where(block), part=_text_part("", part_type))
            )
        return frames

    def said(self, block: Block, text: str) -> list[bytes]:
        extra = {"logprobs": []} if block.kind == "text" else {}
        return [self.event(_STREAMED[block.kind][1], **self._where(block), delta=text, **extra)]

    def closed(self, block: Block) -> list[bytes]:
        self.blocks.append(block)
        part_type, _, done, key = _STREAMED[block.kind]
        where = self._where(block)
        extra = {"logprobs": []} if block.kind == "text" else {}
        if block.kind == "call":
            assert block.call is not None
            extra = {"name": block.call.name}
        frames = [self.event(done, **where, **{key: block.text}, **extra)]
        if part_type is not None:
            frames.append(self.event("response.content_part.done", **where, part=_text_part(block.text, part_type)))
        item = self.started.item(block, self.ids[block.number], "completed")
        return [*frames, self.event("response.output_item.done", output_index=block.number, item=item)]

    async def stream(self) -> AsyncIterator[bytes]:
        skeleton = self.started.envelope("in_progress", [])
        yield self.event("response.created", response=skeleton)
        yield self.event("response.in_progress", response=skeleton)
        async for event in answer_blocks(self.started.generation, self.started.reading):
            if isinstance(event, Opened):
                frames = self.opened(event.block)
            elif isinstance(event, Said):
                frames = self.said(event.block, event.text)
            elif isinstance(event, Closed):
                frames = self.closed(event.block)
            else:
                body = await self.started.finished(self.blocks, event, self.ids)
                frames = [self.event(f"response.{body['status']}", response=body)]
            for frame in frames:
                yield frame
