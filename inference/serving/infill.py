"""Fill in the middle (llama.cpp server's /infill): started as a text completion of one job
(`serving.completions.completion_create`), answered in the shape of llama.cpp's /completion: one
JSON object, or `data: {…}` events of `content` and a last one with `stop: true` and the figures.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from inference.protocol.infill import InfillRequest
from inference.protocol.sse import sse_frame
from inference.runtime.jobs import Finished, Generation, TextDelta
from inference.serving.streams import sse_stream


class _Timings:
    """When the answer's first text and its end came, for llama.cpp's `timings` (the prompt's
    time is counted from when it was accepted, so it includes the first token's)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first: float | None = None

    def text(self) -> None:
        if self.first is None:
            self.first = time.monotonic()

    def body(self, generation: Generation, predicted: int) -> dict[str, float]:
        ended = time.monotonic()
        first = self.first or ended
        return {
            "cache_n": generation.cached_tokens,
            **_rates("prompt", generation.prompt_tokens - generation.cached_tokens, (first - self.started) * 1000),
            **_rates("predicted", predicted, (ended - first) * 1000),
        }


def _rates(kind: str, tokens: int, ms: float) -> dict[str, float]:
    return {
        f"{kind}_n": tokens,
        f"{kind}_ms": round(ms, 3),
        f"{kind}_per_token_ms": round(ms / tokens, 3) if tokens else 0.0,
        f"{kind}_per_second": round(tokens / ms * 1000, 2) if ms else 0.0,
    }


def _final(
    generation: Generation, request: InfillRequest, content: str, finished: Finished, timings: _Timings, text: str
) -> dict[str, Any]:
    """llama.cpp's last answer of a completion: `content` (empty when streamed), how it stopped, the
    token counts and timings. `text` is all the answer's text."""
    job = request.jobs[0]
    if finished.finish_reason == "stop":
        stop_type = "word" if finished.stop_sequence else "eos"
    else:
        stop_type = "limit" if finished.finish_reason == "length" else "none"
    return {
        "index": 0,
        "content": content,
        "stop": True,
        "model": generation.model,
        "tokens_predicted": finished.completion_tokens,
        "tokens_evaluated": finished.prompt_tokens,
        "tokens_cached": finished.prompt_tokens + finished.completion_tokens,
        # The context's end cut it: a limit that was not n_predict (nor n_indent's, where one was set).
        "truncated": stop_type == "limit"
        and not job.indent
        and (job.max_tokens is None or finished.completion_tokens < job.max_tokens),
        "has_new_line": "\n" in text,
        "stop_type": stop_type,
        "stopping_word": finished.stop_sequence or "",
        "timings": timings.body(generation, finished.completion_tokens),
    }


def _picked(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Only the fields asked for (all if none), as llama.cpp's `response_fields`: a path with
    slashes ("timings/prompt_n") reaches into an object and is its key in the answer."""
    if not fields:
        return body
    picked = {}
    for path in fields:
        value: Any = body
        for key in path.split("/"):
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is not _MISSING:
            picked[path] = value
    return picked


_MISSING = object()


async def infill_body(generation: Generation, request: InfillRequest) -> dict[str, Any]:
    """Collect the generation into llama.cpp's answer."""
    timings, texts = _Timings(), []
    finished = None
    async for event in generation.events:
        if isinstance(event, TextDelta):
            timings.text()
            texts.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None, "a generation's events end with its Finished"
    text = "".join(texts)
    return _picked(_final(generation, request, text, finished, timings, text), request.response_fields)


def infill_chunks(generation: Generation, request: InfillRequest) -> AsyncIterator[bytes]:
    """The generation as llama.cpp streams a completion: `data: {"content", "stop": false, …}` per
    text, then the last answer with `stop: true` (and empty `content`); no `[DONE]`."""
    return sse_stream(generation, _chunks(generation, request), done=b"")


async def _chunks(generation: Generation, request: InfillRequest) -> AsyncIterator[bytes]:
    timings, texts = _Timings(), []
    async for event in generation.events:
        if isinstance(event, TextDelta):
            timings.text()
            texts.append(event.text)
            yield sse_frame(
                {
                    "index": 0,
                    "content": event.text,
                    "stop": False,
                    "tokens_predicted": event.completion_tokens,
                    "tokens_evaluated": generation.prompt_tokens,
                }
            )
        elif isinstance(event, Finished):
            yield sse_frame(_final(generation, request, "", event, timings, "".join(texts)))
