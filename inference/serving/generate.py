"""Start a generation for any endpoint: resolve and (lazily) load the model, queue its jobs, wait
until their prompts are accepted, and say what happened (a `Generation`).

Errors found before any output (unknown model, failed load, prompt too long) are raised here, so
they become HTTP errors rather than stream events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from inference.errors import InvalidRequest
from inference.runtime.channel import Job as QueuedJob
from inference.runtime.jobs import (
    ChatJob,
    Finished,
    Generation,
    GenerationJob,
    JobEvent,
    ModelJob,
    PromptAccepted,
    TextDelta,
    TokenClaim,
)
from inference.runtime.pool import model_pool


@dataclass(frozen=True)
class Caller:
    """Who asks, as serving needs to know: its key's prefix ("": none; stored responses belong to
    it), the models the key allows (None: all), and its share of the key's tokens per day that
    each job claims from (None: no quota)."""

    api_key: str = ""
    allowed_models: list[str] | None = None
    token_allowance: TokenClaim | None = None


async def generation_start(
    *, model: str | None, jobs: list[ModelJob], caller: Caller, id_prefix: str, stream: bool = False, end_user: str = ""
) -> Generation:
    """The jobs started on the model, their prompts accepted; its id begins with `id_prefix`."""
    pool = model_pool()
    model_file = pool.catalog.resolve(model, allowed=caller.allowed_models)
    defaults = pool.config.settings_for(model_file.name).sampling_defaults()
    jobs = [_with_model_settings(job, defaults, caller.token_allowance) for job in jobs]
    if 0 < pool.config.max_queue < len(jobs):  # would never fit the queue: retrying cannot help
        raise InvalidRequest(
            f"At most {pool.config.max_queue} prompts per request (model_manager.max_queue).", param="prompt"
        )
    started: list[tuple[QueuedJob, AsyncIterator[JobEvent]]] = []
    try:
        for job in jobs:
            queued = await pool.submit(model_file, job)
            started.append((queued, queued.events()))
        accepted = [await anext(events) for _, events in started]
    except BaseException:
        for _, events in started:
            await events.aclose()  # type: ignore[attr-defined]  # Job.events() is an async generator (typed AsyncIterator)
        raise
    first = started[0][0]
    assert all(isinstance(event, PromptAccepted) for event in accepted) and first.started_at is not None
    per_job = jobs[0].n if isinstance(jobs[0], GenerationJob) else 1
    generation = Generation(
        waiting=first.waiting if len(started) == 1 else Generation.waiting,
        model=model_file.name,
        prompt_tokens=sum(event.prompt_tokens for event in accepted),
        cached_tokens=sum(event.cached_tokens for event in accepted),
        cache_tier=accepted[0].cache_tier,
        choices=per_job * len(jobs),
        sampling=jobs[0].sampling if isinstance(jobs[0], GenerationJob) else Generation.sampling,
        events=started[0][1] if len(started) == 1 else _merged([events for _, events in started], per_job),
        load_ms=first.load_ms,
        queue_wait_ms=round((first.started_at - first.submitted_at) * 1000, 1),
        stream=stream,
        end_user=end_user,
        images=sum(len(job.images) for job in jobs if isinstance(job, ChatJob)),
    )
    generation.id = f"{id_prefix}{generation.id}"
    return generation


def _with_model_settings(job: ModelJob, defaults: dict[str, Any], allowance: TokenClaim | None) -> ModelJob:
    """The job with the model's sampling settings where the request gave none, claiming its
    tokens from the caller's allowance."""
    if isinstance(job, GenerationJob):
        job = replace(job, sampling=job.sampling.with_defaults(defaults))
    return replace(job, token_allowance=allowance) if allowance is not None else job


async def _merged(streams: list[AsyncIterator[JobEvent]], per_job: int) -> AsyncIterator[JobEvent]:
    """The events of several jobs (one per prompt) as one stream, choices numbered on: job k's
    choice i becomes choice k × per_job + i."""
    queue: asyncio.Queue[tuple[int, JobEvent | BaseException | None]] = asyncio.Queue()

    async def pump(number: int, events: AsyncIterator[JobEvent]) -> None:
        try:
            async for event in events:
                await queue.put((number, event))
        except Exception as exc:
            await queue.put((number, exc))
        finally:
            await queue.put((number, None))

    tasks = [asyncio.create_task(pump(number, events)) for number, events in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            number, event = await queue.get()
            if event is None:
                running -= 1
            elif isinstance(event, BaseException):
                raise event
            elif isinstance(event, (TextDelta, Finished)):
                yield replace(event, index=number * per_job + event.index)
    finally:
        for task in tasks:
            task.cancel()
        for events in streams:
            await events.aclose()  # type: ignore[attr-defined]  # Job.events() is an async generator (typed AsyncIterator)
