"""OpenAI's Responses API: a response is a chat completion that may continue a stored one, and
with `store` is kept when it finishes; answered as a response object (JSON) or its typed
events (SSE, each with a `sequence_number`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from inference.errors import ApiError
from inference.protocol import tool_calls as tools
from inference.protocol.responses import ResponseRequest, item_id
from inference.protocol.sse import sse_frame
from inference.runtime.jobs import Generation
from inference.services.responses import response_save, stored_response
from inference.serving.answers import Ended, Text, answer_collected, answer_parts
from inference.serving.chat import chat_completion_create
from inference.serving.generate import Caller
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
    generation = await chat_completion_create(request=chat, caller=caller, id_prefix="resp_")
    save = None
    if request.store:

        async def save(body: dict[str, Any]) -> None:
            await response_save(body=body, request=request, history=history, api_key=caller.api_key)

    return StartedResponse(generation, request, save)


@dataclass
class StartedResponse:
    """A response whose prompt was accepted; `save` keeps the finished object (store: true)."""

    generation: Generation
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

    async def finished(self, text: str, ended: Ended, message_id: str, call_id: str) -> dict[str, Any]:
        """The final object (kept, if stored), from the answer and how it ended."""
        generation, finished = self.generation, ended.finished
        output = [_message(message_id, text, "completed")] if text or ended.call is None else []
        if ended.call is not None:
            namespace = self.request.namespaces.get(ended.call.name)
            output.append(_call(call_id, ended.call, ended.call.arguments, "completed", namespace))
        incomplete = finished.finish_reason == "length" and ended.call is None
        body = self.envelope(
            "incomplete" if incomplete else "completed",
            output,
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            usage={
                "input_tokens": generation.prompt_tokens,
                "input_tokens_details": {"cached_tokens": generation.cached_tokens},
                "output_tokens": finished.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": generation.prompt_tokens + finished.completion_tokens,
            },
        )
        if self.save is not None:
            await self.save(body)
        return body


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(message_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"id": message_id, "type": "message", "status": status, "role": "assistant", "content": content}


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
    text, ended = await answer_collected(started.generation, request.chat)
    return await started.finished(text, ended, item_id("msg"), item_id("fc"))


def response_events(started: StartedResponse, request: ResponseRequest) -> AsyncIterator[bytes]:
    """The response as typed SSE events: created, in_progress, the output items as they form,
    then completed (or incomplete); a failure mid-way is a `response.failed` event."""
    events = _Events(started)
    return sse_stream(started.generation, events.stream(request), error_event=events.failed, done=b"")


class _Events:
    def __init__(self, started: StartedResponse) -> None:
        self.started = started
        self.sequence = 0
        self.message_id, self.call_id = item_id("msg"), item_id("fc")

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_frame(payload, event=kind)

    def failed(self, error: ApiError) -> bytes:
        failure = {"code": error.code or error.type, "message": error.message}
        return self.event("response.failed", response=self.started.envelope("failed", [], error=failure))

    def _message_opened(self) -> list[bytes]:
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        return [
            self.event(
                "response.output_item.added", output_index=0, item=_message(self.message_id, None, "in_progress")
            ),
            self.event("response.content_part.added", **where, part=_text_part("")),
        ]

    def _message_done(self, text: str) -> list[bytes]:
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        return [
            self.event("response.output_text.done", **where, text=text, logprobs=[]),
            self.event("response.content_part.done", **where, part=_text_part(text)),
            self.event("response.output_item.done", output_index=0, item=_message(self.message_id, text, "completed")),
        ]

    def _call_made(self, call: tools.ToolCall, index: int) -> list[bytes]:
        where = {"item_id": self.call_id, "output_index": index}
        namespace = self.started.request.namespaces.get(call.name)
        added, done = (
            _call(self.call_id, call, arguments, status, namespace)
            for arguments, status in (("", "in_progress"), (call.arguments, "completed"))
        )
        return [
            self.event("response.output_item.added", output_index=index, item=added),
            self.event("response.function_call_arguments.delta", **where, delta=call.arguments),
            self.event("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments),
            self.event("response.output_item.done", output_index=index, item=done),
        ]

    async def stream(self, request: ResponseRequest) -> AsyncIterator[bytes]:
        skeleton = self.started.envelope("in_progress", [])
        yield self.event("response.created", response=skeleton)
        yield self.event("response.in_progress", response=skeleton)
        texts: list[str] = []
        async for part in answer_parts(self.started.generation, request.chat):
            if isinstance(part, Text):
                if not texts:
                    for frame in self._message_opened():
                        yield frame
                texts.append(part.text)
                where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
                yield self.event("response.output_text.delta", **where, delta=part.text, logprobs=[])
                continue
            text = "".join(texts)
            frames = []
            if text or part.call is None:
                frames += ([] if texts else self._message_opened()) + self._message_done(text)
            if part.call is not None:
                frames += self._call_made(part.call, index=1 if text else 0)
            for frame in frames:
                yield frame
            body = await self.started.finished(text, part, self.message_id, self.call_id)
            yield self.event(f"response.{body['status']}", response=body)
