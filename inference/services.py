"""Use cases that change state: chat completions, loading and unloading models, reloading the
configuration, and the records they leave in the database."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction

from inference import selectors, tools
from inference.config import AUTO_PRELOAD, ConfigError, get_config, load_config, set_config
from inference.connections import database_call, error_line, on_passing_connection
from inference.errors import DatabaseUnavailable, InvalidRequest, ResponseNotFound
from inference.models import ApiKey, DailyUsage, DiscoveredModel, LoadEvent, RequestRecord, StoredResponse
from inference.protocol import ChatRequest, CompletionRequest, EmbeddingRequest, MessagesRequest
from inference.protocol.responses import ResponseRequest
from inference.protocol.responses_output import StartedResponse
from inference.record_writer import writer
from inference.records import RequestRecording
from inference.runtime.catalog import GGUFError, ModelFile, read_gguf_info
from inference.runtime.channel import Job as QueuedJob
from inference.runtime.errors import PromptTooLong, ShuttingDown
from inference.runtime.grammar import JSON_OBJECT_GRAMMAR, SchemaRefused, schema_grammar
from inference.runtime.jobs import (
    ChatJob,
    ChatMessage,
    Finished,
    Generation,
    GenerationJob,
    JobEvent,
    ModelJob,
    PromptAccepted,
    TextDelta,
)
from inference.runtime.lifecycle import LifecycleEvent, LoadReason
from inference.runtime.pool import model_pool
from inference.runtime.preload import preload_plan
from inference.runtime.worker import ModelWorker

logger = logging.getLogger(__name__)


async def chat_completion_create(
    *, request: ChatRequest, recording: RequestRecording, key: ApiKey | None, id_prefix: str = "chatcmpl-"
) -> Generation:
    """Start a chat completion (its tools and response format applied), for any API that speaks
    in messages (its ids begin with `id_prefix`); see `_generate`."""
    recording.draft.end_user = request.user
    try:
        return await _generate(
            model=request.model, jobs=[await chat_job(request)], stream=request.stream, recording=recording, key=key,
            id_prefix=id_prefix,
        )
    except PromptTooLong as too_long:
        if not request.tool_calls_possible:
            raise
        # Agents offer tools by the dozen; a small model's context may hold the conversation but
        # not every tool described in full.
        logger.info(
            "the prompt with %d tools described in full is %d tokens, more than %s's context (%d): "
            "offering them in short", len(request.tools), too_long.tokens, too_long.model, too_long.n_ctx,
        )
        return await _generate(
            model=request.model, jobs=[await chat_job(request, compact_tools=True)], stream=request.stream,
            recording=recording, key=key, id_prefix=id_prefix,
        )


async def response_create(
    *, request: ResponseRequest, recording: RequestRecording, key: ApiKey | None
) -> StartedResponse:
    """Start a Responses API response: a stored conversation it continues comes before its
    input (404 if there is none under this key); with `store`, the finished response is kept."""
    history: list[dict[str, Any]] = []
    chat = request.chat
    if request.previous_response_id:
        previous = await stored_response(request.previous_response_id, key=key, param="previous_response_id")
        history = previous.conversation
        chat = request.continuing(history)
    generation = await chat_completion_create(request=chat, recording=recording, key=key, id_prefix="resp_")
    save = None
    if request.store:
        async def save(body: dict[str, Any]) -> None:
            await _response_save(body=body, request=request, history=history, key=key)
    return StartedResponse(generation, request, save)


async def stored_response(response_id: str, *, key: ApiKey | None, param: str | None = None) -> StoredResponse:
    """The response stored under this id and key; a 404 if there is none (another key's
    responses do not exist for this one), a 503 if the database cannot be reached."""
    prefix = key.prefix if key else ""
    found = await database_call(
        lambda: selectors.stored_response_get(response_id, api_key=prefix), needed_for="the stored responses"
    )
    if found is None:
        raise ResponseNotFound(response_id, param=param)
    return found


async def response_delete(*, response_id: str, key: ApiKey | None) -> None:
    stored = await stored_response(response_id, key=key)
    await database_call(stored.delete, needed_for="the stored responses")


async def _response_save(
    *, body: dict[str, Any], request: ResponseRequest, history: list[dict[str, Any]], key: ApiKey | None
) -> None:
    """Keep a finished response, written by the records thread in turn with the request records
    (while the database is away it waits there, and the response does not wait for it)."""
    columns = {
        "response_id": body["id"], "instance": get_config().server.instance, "api_key": key.prefix if key else "",
        "model": body["model"], "status": body["status"], "previous_response_id": request.previous_response_id or "",
        "body": body, "input_items": list(request.input), "history": history, "created_at": datetime.now(UTC),
    }
    written = writer.submit(lambda: StoredResponse.objects.create(**columns), label=f"response {body['id']}")
    try:
        await asyncio.shield(asyncio.wrap_future(written))
    except DatabaseError as error:
        logger.error("could not store response %s: %s", body["id"], error_line(error))


async def message_create(*, request: MessagesRequest, recording: RequestRecording, key: ApiKey | None) -> Generation:
    """Start an Anthropic message: the chat completion it is, its ids beginning with msg_."""
    return await chat_completion_create(request=request.chat, recording=recording, key=key, id_prefix="msg_")


async def message_tokens_count(
    *, request: MessagesRequest, recording: RequestRecording, key: ApiKey | None
) -> Generation:
    """Count the prompt of an Anthropic message: prepared exactly as message_create would (tools
    instruction included), on the model's worker, without generating; a recorded request too."""
    chat = replace(request.chat, job=replace(request.chat.job, count_only=True), stream=False)
    return await chat_completion_create(request=chat, recording=recording, key=key, id_prefix="msg_")


async def completion_create(
    *, request: CompletionRequest, recording: RequestRecording, key: ApiKey | None
) -> Generation:
    """Start a text completion, one job per prompt; see `_generate`."""
    recording.draft.end_user = request.user
    return await _generate(
        model=request.model, jobs=list(request.jobs), stream=request.stream, recording=recording, key=key,
        id_prefix="cmpl-",
    )


async def embedding_create(
    *, request: EmbeddingRequest, recording: RequestRecording, key: ApiKey | None
) -> Generation:
    """Start embedding the inputs on the model's embedding context; see `_generate`."""
    recording.draft.end_user = request.user
    return await _generate(
        model=request.model, jobs=[request.job], stream=False, recording=recording, key=key, id_prefix="embd-"
    )


async def chat_job(request: ChatRequest, *, compact_tools: bool = False) -> ChatJob:
    """The request's job with its tools offered in the prompt (`compact_tools`: in short) and
    its output constrained: a forced tool call or a JSON response format becomes a grammar
    (built off the event loop, within a bound); a schema the grammar cannot enforce, or too
    complex to build, is a 400 naming where it was. Counting a prompt builds no grammar."""
    job, grammar = request.job, None
    schema, param = None, request.format_param
    messages = job.messages
    if request.tool_calls_possible:
        offered = request.tools
        if request.tool_choice.startswith("function:"):
            offered = tuple(tool for tool in offered if tool.name == request.tool_choice.removeprefix("function:"))
        offer = tools.instruction(offered, required=request.tool_call_forced, compact=compact_tools)
        messages = _with_system(messages, offer.content)
        if request.tool_call_forced:
            schema, param = tools.call_schema(offered), "tools"
    if job.count_only:
        return replace(job, messages=messages)
    response_format = request.response_format or {"type": "text"}
    if schema is None and response_format["type"] == "json_object":
        grammar = JSON_OBJECT_GRAMMAR
    elif schema is None and response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema") or {}
    if schema is not None:
        try:
            grammar = await schema_grammar(schema)
        except SchemaRefused as refused:
            what = "too complex to enforce" if refused.too_complex else "this server cannot enforce"
            raise InvalidRequest(f"'{param}' has a JSON schema {what}: {refused.reason}", param=param) from None
    return replace(job, messages=messages, grammar=grammar)


def _with_system(messages: tuple[ChatMessage, ...], text: str) -> tuple[ChatMessage, ...]:
    """Messages with `text` at the start of the system message (a new one if there is none):
    several templates accept a system message only first."""
    if messages and messages[0].role == "system":
        return (ChatMessage("system", f"{text}\n\n{messages[0].content}"), *messages[1:])
    return (ChatMessage("system", text), *messages)


async def _generate(
    *,
    model: str | None,
    jobs: list[ModelJob],
    stream: bool,
    recording: RequestRecording,
    key: ApiKey | None,
    id_prefix: str,
) -> Generation:
    """Resolve and (lazily) load the model, queue the jobs and wait until their prompts are
    accepted.

    Errors found before any output (unknown model, failed load, prompt too long) are raised here,
    so they become HTTP errors rather than stream events. The generation's events go through the
    request's recording, which fills in its draft and saves its record.
    """
    draft = recording.draft
    draft.stream, draft.model = stream, model or ""
    pool = model_pool()
    model_file = pool.catalog.resolve(model, allowed=key.allowed_models if key else None)
    draft.model = model_file.name
    jobs = _with_model_sampling(jobs, pool.config.settings_for(model_file.name).sampling_defaults())
    if recording.token_window is not None:
        jobs = [replace(job, token_allowance=recording.token_window.claim) for job in jobs]
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
            await events.aclose()  # type: ignore[attr-defined]
        raise
    first = started[0][0]
    assert all(isinstance(event, PromptAccepted) for event in accepted) and first.started_at is not None
    draft.load_ms = first.load_ms
    draft.queue_wait_ms = round((first.started_at - first.submitted_at) * 1000, 1)
    draft.prompt_tokens = sum(event.prompt_tokens for event in accepted)
    draft.cached_tokens = sum(event.cached_tokens for event in accepted)
    draft.cache_tier = accepted[0].cache_tier
    per_job = jobs[0].n if isinstance(jobs[0], GenerationJob) else 1
    events = started[0][1] if len(started) == 1 else _merged([events for _, events in started], per_job)
    generation = Generation(
        waiting=first.waiting if len(started) == 1 else Generation.waiting,
        model=model_file.name,
        prompt_tokens=draft.prompt_tokens,
        cached_tokens=draft.cached_tokens,
        cache_tier=draft.cache_tier,
        choices=per_job * len(jobs),
        sampling=jobs[0].sampling if isinstance(jobs[0], GenerationJob) else Generation.sampling,
        events=recording.events(events, choices=per_job * len(jobs)),
    )
    generation.id = draft.completion_id = f"{id_prefix}{generation.id}"
    return generation


def _with_model_sampling(jobs: list[ModelJob], defaults: dict[str, Any]) -> list[ModelJob]:
    """The jobs with the model's sampling settings where the request gave none."""
    return [
        replace(job, sampling=job.sampling.with_defaults(defaults)) if isinstance(job, GenerationJob) else job
        for job in jobs
    ]


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
            await events.aclose()  # type: ignore[attr-defined]


async def model_load(*, model: str, reason: LoadReason) -> str:
    """Load a model now (if it is not loaded yet); returns its name."""
    pool = model_pool()
    model_file = pool.catalog.resolve(model)
    await pool.acquire(model_file, reason)
    return model_file.name


# model_manager.preload "auto" ranks the models by their requests over this span.
PRELOAD_AUTO_SPAN = timedelta(hours=24)


async def models_preload() -> list[str]:
    """Load `model_manager.preload`'s models (see runtime.preload), one at a time, in the
    background of a server that already answers; returns the names loaded. A model that fails
    to load is logged and the next one tried: nothing here is raised."""
    pool = model_pool()
    preload = pool.config.preload
    if not preload:
        return []
    auto = preload == AUTO_PRELOAD
    names: Sequence[str] = preload
    if auto:
        since, instance = datetime.now(UTC) - PRELOAD_AUTO_SPAN, get_config().server.instance
        try:
            names = await database_call(
                lambda: selectors.most_requested_models(since=since, instance=instance), needed_for="the records"
            )
        except (DatabaseUnavailable, DatabaseError) as error:
            logger.error("preload: the most requested models are unknown, nothing preloaded: %s", error_line(error))
            return []
    plan = await asyncio.to_thread(preload_plan, names, pool, named=not auto)
    logger.info(
        "preload (%s): %s", preload if auto else "list", ", ".join(chosen.model.name for chosen in plan) or "nothing to load"
    )
    loaded = []
    for chosen in plan:
        name = chosen.model.name
        current = pool.worker(name)
        if not (current is not None and current.usable) and not pool.has_room(chosen.memory_bytes):
            logger.info("preload: %s skipped: other models were loaded meanwhile and fill the pool", name)
            continue
        try:
            await pool.acquire(chosen.model, LoadReason.PRELOAD)
        except ShuttingDown:
            return loaded
        except Exception as error:  # the server serves on: the next request for it tries again
            logger.error("preload: %s failed to load: %s", name, error)
            continue
        logger.info("preload: %s is loaded", name)
        loaded.append(name)
    return loaded


async def _unloaded(workers: list[ModelWorker]) -> list[str]:
    """Wait until the workers have freed their models; their names."""
    await asyncio.gather(*(asyncio.to_thread(worker.join) for worker in workers))
    return sorted(worker.model.name for worker in workers)


async def model_unload(*, model: str, reason: LoadReason) -> dict[str, list[str]]:
    """Unload a model or "all": idle ones now, busy ones when their running requests end."""
    now, pending = model_pool().unload(model, reason)
    return {"unloaded": await _unloaded(now), "pending": sorted(w.model.name for w in pending)}


def model_pin(*, model: str, pinned: bool) -> str:
    """Pin or unpin a model: saved as its admin setting (DiscoveredModel.pinned, an explicit
    True or False over config.json's) and put in force on it now if it is loaded; returns its
    name. Raises ModelNotFound. Writes the database: not on the event loop."""
    pool = model_pool()
    name = pool.catalog.resolve(model).name
    updated = DiscoveredModel.objects.filter(instance=get_config().server.instance, name=name).update(pinned=pinned)
    if not updated:  # discovered since the last sync of the admin's rows
        discovered_models_sync(models=pool.catalog.available())
        DiscoveredModel.objects.filter(instance=get_config().server.instance, name=name).update(pinned=pinned)
    pool.pin(name, pinned)
    logger.info("%s %s", "pinned" if pinned else "unpinned", name)
    return name


def model_pin_apply(*, row: DiscoveredModel) -> None:
    """Put a model's saved pin (config.json's if none is saved) in force now, if it is loaded
    (the admin's change form saved it)."""
    pool = model_pool()
    pool.pin(row.name, pool.config.settings_for(row.name, row.setting_overrides()).pinned)


async def models_reap() -> dict[str, list[str]]:
    """Run the idle check now; the models it unloaded."""
    return {"unloaded": await _unloaded(model_pool().reaper.reap())}


async def config_reload() -> dict[str, list[str]]:
    """Re-read config.json and rediscover the models directory.

    New settings apply at each model's next load; loaded models whose file is gone are unloaded.
    An invalid config.json is refused (400) and the config in force stays.
    """
    try:
        config = await asyncio.to_thread(load_config)
    except ConfigError as exc:
        raise InvalidRequest(f"config.json was not reloaded: {exc}") from None
    listening = get_config().server
    if (config.server.host, config.server.port) != (listening.host, listening.port):
        logger.warning("server.host and server.port changes take effect when the server restarts")
    # The server keeps its address (perhaps given by --host/--port) until it restarts.
    config = replace(config, server=replace(config.server, host=listening.host, port=listening.port))
    set_config(config)
    logging.getLogger().setLevel(config.server.log_level)
    changes, gone = model_pool().reload(config.model_manager)
    await _unloaded(gone)
    models = model_pool().catalog.available()
    await database_call(lambda: discovered_models_sync(models=models), needed_for="the models' admin rows")
    logger.info(
        "reloaded %s: added %s, removed %s, changed %s",
        config.path,
        changes.added or "none",
        changes.removed or "none",
        changes.changed or "none",
    )
    return {"added": changes.added, "removed": changes.removed, "changed": changes.changed}


def load_event_record(sender: Any, *, event: LifecycleEvent, **_: Any) -> None:
    """Receiver of `model_lifecycle`, on the thread of the event (a model's worker): one LoadEvent
    row per load, failed load and unload, written by the records thread in turn with the request
    records. Returns once the row is written, or waits in memory for the database; raises the
    error of a write that cannot succeed."""
    columns = {"instance": get_config().server.instance, "created_at": datetime.now(UTC), **asdict(event)}
    written = writer.submit(lambda: LoadEvent.objects.create(**columns), label=f"{event.kind} of {event.model}")
    written.result()


def model_settings_overrides(name: str) -> dict[str, Any]:
    """The settings saved for a model in the admin (those left empty are not overrides). Called
    on a worker or executor thread as the model loads."""
    instance = get_config().server.instance
    try:
        row = on_passing_connection(lambda: DiscoveredModel.objects.filter(instance=instance, name=name).first())
    except DatabaseError as exc:
        logger.error("could not read the saved settings of %s (config.json's apply): %s", name, error_line(exc))
        return {}
    return {} if row is None else row.setting_overrides()


def discovered_models_sync(*, models: dict[str, ModelFile]) -> None:
    """Bring DiscoveredModel rows in line with the models directory.

    Headers are read again only for files whose size or mtime changed. Rows of files that are
    gone are marked missing, never deleted. A database problem is logged, not raised.
    """
    instance = get_config().server.instance
    now = datetime.now(UTC)
    try:
        rows = {row.name: row for row in DiscoveredModel.objects.filter(instance=instance)}
        for name, model in models.items():
            row = rows.get(name) or DiscoveredModel(instance=instance, name=name)
            modified = datetime.fromtimestamp(model.modified, UTC)
            if row.pk is None or (row.size_bytes, row.file_modified_at) != (model.size_bytes, modified):
                _describe_from_header(row, model)
            row.path, row.size_bytes, row.file_modified_at = str(model.path), model.size_bytes, modified
            row.present, row.missing_since, row.last_seen_at = True, None, now
            row.save()
        DiscoveredModel.objects.filter(instance=instance, present=True).exclude(
            name__in=list(models)
        ).update(present=False, missing_since=now)
    except DatabaseError as exc:
        logger.error("could not record the discovered models: %s", exc)


def _describe_from_header(row: DiscoveredModel, model: ModelFile) -> None:
    try:
        info = read_gguf_info(model.path)
    except GGUFError as exc:
        row.header_error = str(exc)
        return
    row.header_error = ""
    row.architecture = info.architecture
    row.parameter_count = info.parameter_count
    row.quantization = info.quantization
    row.context_length = info.context_length


def request_records_prune(*, older_than_days: int) -> int:
    """Delete request records older than the retention period (daily totals stay); how many."""
    if older_than_days <= 0:
        return 0
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    deleted, _ = RequestRecord.objects.filter(created_at__lt=cutoff).delete()
    StoredResponse.objects.filter(created_at__lt=cutoff).delete()  # the same retention
    return deleted


def daily_usage_rebuild() -> int:
    """Recompute the daily rollups of every day that still has request records; how many rows."""
    first = RequestRecord.objects.order_by("created_at").values_list("created_at", flat=True).first()
    if first is None:
        return 0
    rollups: dict[tuple[str, Any, str, str], DailyUsage] = {}
    columns = ("instance", "created_at", "model", "api_key", "status", "prompt_tokens", "completion_tokens",
               "ttft_ms", "tokens_per_second")
    for instance, created, model, api_key, *values in RequestRecord.objects.values_list(*columns).iterator(chunk_size=20000):
        day = created.astimezone(UTC).date()
        usage = rollups.get((instance, day, model, api_key))
        if usage is None:
            usage = rollups[(instance, day, model, api_key)] = DailyUsage(
                instance=instance, day=day, model=model, api_key=api_key
            )
        usage.count_request(*values)
    with transaction.atomic():
        DailyUsage.objects.filter(day__gte=first.astimezone(UTC).date()).delete()
        DailyUsage.objects.bulk_create(rollups.values(), batch_size=1000)
    return len(rollups)
