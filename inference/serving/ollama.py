"""Ollama's /api/chat, /api/generate, /api/embed and /api/embeddings: each request runs as the
other APIs' do (a chat completion, a raw text completion, embeddings), and its answer is
Ollama's: NDJSON objects while streaming (the thinking, the text, each tool call whole as soon
as it is read), or one object, closed by `done`, `done_reason` and its timings in nanoseconds.

A request with nothing to generate loads its model (`done_reason` "load"), or with `keep_alive`
0 unloads it ("unload", as `ollama stop` asks; a pinned model stays). Timings: `load_duration`
is the model's load when the request waited for it, `prompt_eval_duration` from the prompt's
acceptance to the first token, `eval_duration` from there to the end, `total_duration` the
whole request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from inference.errors import ContextLengthExceeded
from inference.protocol.errors import api_error
from inference.protocol.ollama import OllamaEmbedding, OllamaGeneration
from inference.protocol.ollama_output import (
    TextLines,
    Timings,
    answer_object,
    error_line,
    ndjson_line,
    tool_call_object,
)
from inference.runtime.errors import PromptTooLong
from inference.runtime.jobs import Finished, Generation, TokenizeJob
from inference.runtime.lifecycle import LoadReason
from inference.runtime.pool import model_pool
from inference.services.models import model_unload
from inference.serving.answers import Part, answer_parts
from inference.serving.chat import StartedChat, chat_completion_create, logprob_entry
from inference.serving.completions import completion_create
from inference.serving.embeddings import embedded_vectors, embedding_create
from inference.serving.generate import Caller, generation_start
from inference.serving.prompts import PLAIN_READING
from inference.serving.streams import sse_stream
from inference.templates import CallEnded, CallStarted, Content, Reasoning

logger = logging.getLogger(__name__)

NANOSECONDS = 1_000_000_000


@dataclass
class OllamaStarted:
    """An Ollama request under way: its generation (read as a chat's answer), when the request
    began and its prompt was accepted (time.monotonic), and why it ends if it generates nothing."""

    answer: StartedChat
    begun: float
    accepted: float = field(default_factory=time.monotonic)
    only: str | None = None  # "load" or "unload": a request that generates nothing

    @property
    def generation(self) -> Generation:
        return self.answer.generation

    def timings(self, finished: Finished, first_at: float | None) -> Timings:
        now = time.monotonic()
        first = first_at or now
        return Timings(
            total_ns=_ns(now - self.begun),
            load_ns=_ns((self.generation.load_ms or 0) / 1000),
            prompt_tokens=self.generation.prompt_tokens,
            prompt_ns=_ns(first - self.accepted),
            eval_tokens=finished.completion_tokens,
            eval_ns=_ns(now - first),
        )


def _ns(seconds: float) -> int:
    return max(0, round(seconds * NANOSECONDS))


async def ollama_generation_start(*, request: OllamaGeneration, caller: Caller) -> OllamaStarted:
    """Start an /api/chat or /api/generate request: its chat completion, its raw completion, or
    the load (or unload) of its model."""
    begun = time.monotonic()
    try:
        if request.chat is not None:
            started = await chat_completion_create(request=request.chat, caller=caller, id_prefix="ollama-")
            return OllamaStarted(started, begun)
        if request.completion is not None:
            generation = await completion_create(request=request.completion, caller=caller)
            return OllamaStarted(StartedChat(generation, PLAIN_READING), begun)
    except PromptTooLong as too_long:
        raise _context_refusal(too_long, request.num_ctx) from None
    if request.keep_alive == 0:
        return OllamaStarted(StartedChat(await _unloaded(request.model, caller), PLAIN_READING), begun, only="unload")
    # Vocabulary work (an empty tokenize) loads the model and is answered without a slot.
    job = TokenizeJob(content="", keep_alive=request.keep_alive)
    generation = await generation_start(model=request.model, jobs=[job], caller=caller, id_prefix="ollama-")
    return OllamaStarted(StartedChat(generation, PLAIN_READING), begun, only="load")


def _context_refusal(too_long: PromptTooLong, num_ctx: int | None) -> Exception:
    """A prompt longer than the loaded context, worded for a client that asked for a longer one."""
    if num_ctx is None or num_ctx <= too_long.n_ctx:
        return too_long
    refused = api_error(too_long)
    assert refused is not None
    return ContextLengthExceeded(
        f"{refused.message} options.num_ctx ({num_ctx}) does not resize a loaded model: set n_ctx for "
        f"{too_long.model} in config.json (model_manager.models.{too_long.model}.n_ctx).",
        param="options.num_ctx",
    )


async def _unloaded(model: str, caller: Caller) -> Generation:
    """Unload the model now (if it is loaded and not pinned), as a generation that did only that."""
    pool = model_pool()
    name = pool.catalog.resolve(model, allowed=caller.allowed_models).name
    workers = [worker for worker in pool.workers() if worker.model.name == name and worker.usable]
    if any(worker.settings.pinned for worker in workers):
        logger.info("not unloading %s for keep_alive 0: it is pinned", name)
    elif workers:
        await model_unload(model=name, reason=LoadReason.KEEP_ALIVE)

    async def events() -> AsyncIterator[Finished]:
        yield Finished("unload", prompt_tokens=0, completion_tokens=0)

    generation = Generation(model=name, prompt_tokens=0, events=events())
    generation.id = f"ollama-{generation.id}"
    return generation


class _Answer:
    """What a chat or generate answer said, as it comes: for its one object, or its lines."""

    def __init__(self, started: OllamaStarted, request: OllamaGeneration) -> None:
        self.started, self.request = started, request
        self.first_at: float | None = None
        self.names: dict[int, str] = {}  # the calls begun, by the parser's index

    def object(self, part: Part, **said: Any) -> dict[str, Any]:
        logprobs = [logprob_entry(entry) for entry in part.logprobs] if self.request.logprobs else None
        return answer_object(self.request.named, self.request.chat_shaped, logprobs=logprobs, **said)

    def said(self, part: Part) -> dict[str, Any] | None:
        """What a part adds to the answer (None: nothing), noting when its first token came."""
        event = part.event
        if self.first_at is None and not isinstance(event, Finished):
            self.first_at = time.monotonic()
        if isinstance(event, Content) and (event.text or (part.logprobs and self.request.logprobs)):
            return {"content": event.text}
        if isinstance(event, Reasoning) and event.text:
            return {"thinking": event.text}
        if isinstance(event, CallStarted):
            self.names[event.index] = event.name
        elif isinstance(event, CallEnded):
            call = tool_call_object(self.names[event.index], event.arguments, len(self.names) - 1)
            return {"tool_calls": [call]}
        return None

    def closing(self, finished: Finished, **whole: Any) -> dict[str, Any]:
        """The last object: the answer's end, its reason and timings (and, `whole`, all it said)."""
        only = self.started.only
        timings = None if only else self.started.timings(finished, self.first_at)
        return answer_object(
            self.request.named,
            self.request.chat_shaped,
            done_reason=only or finished.finish_reason,
            timings=timings,
            **whole,
        )


async def ollama_answer_body(started: OllamaStarted, request: OllamaGeneration) -> dict[str, Any]:
    """The whole answer as one object (`stream: false`)."""
    answer = _Answer(started, request)
    content, thinking, calls, logprobs = [], [], [], []
    async for part in answer_parts(started.generation, started.answer.reading):
        if isinstance(part.event, Finished):
            whole: dict[str, Any] = {"content": "".join(content), "thinking": "".join(thinking), "tool_calls": calls}
            if request.logprobs:
                whole["logprobs"] = logprobs
            return answer.closing(part.event, **whole)
        logprobs += [logprob_entry(entry) for entry in part.logprobs]
        said = answer.said(part) or {}
        content.append(said.get("content", ""))
        thinking.append(said.get("thinking", ""))
        calls += said.get("tool_calls", [])
    raise AssertionError("a generation ends with Finished")


def ollama_answer_lines(started: OllamaStarted, request: OllamaGeneration) -> AsyncIterator[bytes]:
    """The answer as NDJSON lines: each piece as it comes, then the closing object; an error
    after the first line is one `{"error"}` line, and the stream ends."""
    return sse_stream(started.generation, _lines(started, request), error_event=error_line, done=b"")


async def _lines(started: OllamaStarted, request: OllamaGeneration) -> AsyncIterator[bytes]:
    answer = _Answer(started, request)
    texts = TextLines(request.named, request.chat_shaped)
    async for part in answer_parts(started.generation, started.answer.reading):
        if isinstance(part.event, Finished):
            yield ndjson_line(answer.closing(part.event))
        elif (said := answer.said(part)) is not None:
            plain = list(said) == ["content"] and not request.logprobs
            yield texts.line(said["content"]) if plain else ndjson_line(answer.object(part, **said))


# --- embeddings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OllamaEmbedded:
    generation: Generation
    begun: float


async def ollama_embedding_start(*, request: OllamaEmbedding, caller: Caller) -> OllamaEmbedded:
    begun = time.monotonic()
    return OllamaEmbedded(await embedding_create(request=request.embedding, caller=caller), begun)


async def ollama_embed_body(embedded: OllamaEmbedded, request: OllamaEmbedding) -> dict[str, Any]:
    """/api/embed's answer: the vectors (unit length), and the request's timings."""
    generation = embedded.generation
    vectors = await embedded_vectors(generation)
    return {
        "model": request.named,
        "embeddings": [list(vector) for vector in vectors],
        "total_duration": _ns(time.monotonic() - embedded.begun),
        "load_duration": _ns((generation.load_ms or 0) / 1000),
        "prompt_eval_count": generation.prompt_tokens,
    }


async def ollama_embeddings_body(embedded: OllamaEmbedded, request: OllamaEmbedding) -> dict[str, Any]:
    """/api/embeddings' answer (Ollama's older endpoint): the one prompt's vector."""
    [vector] = await embedded_vectors(embedded.generation)
    return {"embedding": list(vector)}


def ollama_generation_of(started: OllamaStarted | OllamaEmbedded) -> Generation:
    return started.generation
