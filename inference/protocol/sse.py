"""Server-sent events, for every API that streams: one frame format, the stream that sends a
response's frames (several per write when they are ready together), ends it, and stops the
generation when the client goes away."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from django.http import StreamingHttpResponse

from inference.errors import ApiError
from inference.protocol.errors import api_error, error_body
from inference.runtime.errors import RuntimeFailure
from inference.runtime.jobs import Generation


def sse_frame(payload: Mapping[str, Any], *, event: str | None = None) -> bytes:
    """One server-sent event: its JSON data, named `event` if given (Anthropic's and the Responses
    API's events are named; OpenAI's chunks are not)."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n".encode() if event else f"data: {data}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def openai_error_event(error: ApiError) -> bytes:
    return sse_frame(error_body(error.message, error.type, error.param, error.code))


async def sse_stream(
    generation: Generation,
    chunks: AsyncIterator[bytes],
    *,
    error_event: Callable[[ApiError], bytes] = openai_error_event,
    done: bytes = SSE_DONE,
) -> AsyncIterator[bytes]:
    """A response's SSE chunks, then `done` (OpenAI's `data: [DONE]`).

    Chunks whose events were already waiting when the one before was made go out in one write
    (a client or loop slower than the model gets several tokens per write, not one write each).
    An error after the stream started is sent as one `error_event` (OpenAI's: `data: {"error":
    ...}`), then the stream ends. Closing this iterator (the client went away) stops the
    generation.
    """
    ready: list[bytes] = []
    try:
        async for chunk in chunks:
            ready.append(chunk)
            if not generation.waiting():
                yield b"".join(ready)
                ready.clear()
    except (ApiError, RuntimeFailure) as exc:
        yield b"".join(ready) + error_event(api_error(exc))
        return
    finally:
        # The chunks first: they may be reading the events in a task of their own (a heartbeat's),
        # and closing the events under that task would fail and leave the generation running.
        await chunks.aclose()  # type: ignore[attr-defined]
        await generation.events.aclose()  # type: ignore[attr-defined]
    if ready or done:
        yield b"".join(ready) + done


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def sse_event_schema(description: str) -> dict[str, Any]:
    """A `text/event-stream` response: the schema of each of its events (as a client parses one:
    its `event` and `data` fields), which is what OpenAPI tools check a stream's events against."""
    return {
        "type": "object",
        "description": description,
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }
