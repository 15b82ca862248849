"""Text completions: one job per prompt, started on the model; its events as OpenAI's completion
(JSON) or chunks (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from inference.protocol import CompletionRequest
from inference.protocol.common import envelope, usage_body
from inference.protocol.sse import sse_frame
from inference.runtime.jobs import Finished, Generation, TextDelta, TokenLogprob
from inference.serving.generate import Caller, generation_start
from inference.serving.streams import sse_stream


async def completion_create(*, request: CompletionRequest, caller: Caller) -> Generation:
    """Start a text completion, one job per prompt (their choices numbered on)."""
    return await generation_start(
        model=request.model,
        jobs=list(request.jobs),
        caller=caller,
        id_prefix="cmpl-",
        stream=request.stream,
        end_user=request.user,
    )


def _logprobs_body(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    """The legacy shape: parallel lists, and each token's character offset in the text."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{alternative.token: alternative.logprob for alternative in entry.top} for entry in entries],
        "text_offset": offsets,
    }


def _echo(request: CompletionRequest, index: int) -> str:
    per_prompt = request.jobs[0].n
    return request.jobs[index // per_prompt].prompt if request.echo else ""


async def completion_body(generation: Generation, request: CompletionRequest) -> dict[str, Any]:
    """Collect a generation's events into an OpenAI text_completion object."""
    texts = [[_echo(request, index)] for index in range(generation.choices)]
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(generation.choices)]
    finished: dict[int, Finished] = {}
    async for event in generation.events:
        if isinstance(event, TextDelta):
            texts[event.index].append(event.text)
            logprobs[event.index].extend(event.logprobs)
        elif isinstance(event, Finished):
            finished[event.index] = event
    return {
        **envelope(generation, "text_completion"),
        "choices": [
            {
                "text": "".join(texts[index]),
                "index": index,
                "logprobs": _logprobs_body(logprobs[index], len(texts[index][0])) if request.logprobs else None,
                "finish_reason": finished[index].finish_reason,
            }
            for index in range(generation.choices)
        ],
        "usage": usage_body(generation, list(finished.values())),
    }


def completion_chunks(generation: Generation, request: CompletionRequest) -> AsyncIterator[bytes]:
    """The generation as text_completion SSE events (each with part of one choice's text)."""
    return sse_stream(generation, _chunks(generation, request))


async def _chunks(generation: Generation, request: CompletionRequest) -> AsyncIterator[bytes]:
    usage_field = {"usage": None} if request.include_usage else {}
    offsets = [0] * generation.choices

    def chunk(index: int, text: str, finish_reason: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse_frame({**envelope(generation, "text_completion"), "choices": [choice], **usage_field})

    finished: list[Finished] = []
    for index in range(generation.choices):
        if echo := _echo(request, index):
            offsets[index] = len(echo)
            yield chunk(index, echo)
    async for event in generation.events:
        if isinstance(event, TextDelta):
            logprobs = _logprobs_body(event.logprobs, offsets[event.index]) if request.logprobs else None
            offsets[event.index] += len(event.text)
            yield chunk(event.index, event.text, logprobs=logprobs)
        elif isinstance(event, Finished):
            finished.append(event)
            yield chunk(event.index, "", finish_reason=event.finish_reason)
    if request.include_usage:
        yield sse_frame(
            {**envelope(generation, "text_completion"), "choices": [], "usage": usage_body(generation, finished)}
        )
