"""Streaming an answer: its SSE frames, several per write when they are ready together, ended
the API's way, and the generation stopped when the client goes away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from inference.errors import ApiError
from inference.protocol.errors import api_error
from inference.protocol.sse import SSE_DONE, openai_error_event
from inference.runtime.errors import RuntimeFailure
from inference.runtime.jobs import Generation


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
        await chunks.aclose()  # type: ignore[attr-defined]  # an async generator, typed AsyncIterator (no aclose)
        await generation.events.aclose()  # type: ignore[attr-defined]  # an async generator, typed AsyncIterator (no aclose)
    if ready or done:
        yield b"".join(ready) + done
