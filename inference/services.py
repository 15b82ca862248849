"""Use cases that change state: chat completions, loading and unloading models, reloading the
configuration, and the records they leave in the database."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError, transaction

from inference.config import ConfigError, get_config, load_config, set_config
from inference.discovery import GGUFError, ModelFile, read_gguf_info
from inference.errors import ApiError, InvalidRequest
from inference import metrics, tools
from inference.jobs import (
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
from inference.lifecycle import LifecycleEvent, LoadReason
from inference.manager import Job as QueuedJob
from inference.manager import ModelWorker, model_manager
from inference.models import ApiKey, DailyUsage, DiscoveredModel, LoadEvent, RequestRecord
from inference.protocol import ChatRequest, CompletionRequest, EmbeddingRequest
from inference.runtime.grammar import JSON_OBJECT_GRAMMAR, SchemaNotSupported, json_schema_grammar

logger = logging.getLogger(__name__)


@dataclass
class RequestDraft:
    """What will become a request's RequestRecord, filled in as the request goes."""

    endpoint: str
    client_address: str = ""
    user_agent: str = ""
    started: float = field(default_factory=time.monotonic)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    completion_id: str = ""
    model: str = ""
    stream: bool = False
    status: str = RequestRecord.Status.OK
    http_status: int = 200
    error_code: str = ""
    error_message: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    queue_wait_ms: float | None = None
    load_ms: float | None = None
    ttft_ms: float | None = None
    first_token_at: float | None = None
    tokens_per_second: float | None = None
    end_user: str = ""
    api_key: str = ""  # the key's prefix
    saved: bool = False

    def fail(self, *, status: str, http_status: int, code: str | None, message: str) -> None:
        self.status, self.http_status = status, http_status
        self.error_code, self.error_message = code or "", message


async def chat_completion_create(*, request: ChatRequest, draft: RequestDraft, key: ApiKey | None) -> Generation:
    """Start a chat completion (its tools and response format applied); see `_generate`."""
    draft.end_user = request.user
    return await _generate(
        model=request.model, jobs=[chat_job(request)], stream=request.stream, draft=draft, key=key,
        id_prefix="chatcmpl-",
    )


async def completion_create(*, request: CompletionRequest, draft: RequestDraft, key: ApiKey | None) -> Generation:
    """Start a text completion, one job per prompt; see `_generate`."""
    draft.end_user = request.user
    return await _generate(
        model=request.model, jobs=list(request.jobs), stream=request.stream, draft=draft, key=key,
        id_prefix="cmpl-",
    )


async def embedding_create(*, request: EmbeddingRequest, draft: RequestDraft, key: ApiKey | None) -> Generation:
    """Start embedding the inputs on the model's embedding context; see `_generate`."""
    draft.end_user = request.user
    return await _generate(
        model=request.model, jobs=[request.job], stream=False, draft=draft, key=key, id_prefix="embd-"
    )


def chat_job(request: ChatRequest) -> ChatJob:
    """The request's job with its tools offered in the prompt and its output constrained:
    a forced tool call or a JSON response format becomes a grammar; a schema the grammar
    cannot enforce is a 400 naming the keyword."""
    job, grammar = request.job, None
    schema, param = None, "response_format"
    messages = job.messages
    if request.tool_calls_possible:
        offered = request.tools
        if request.tool_choice.startswith("function:"):
            offered = tuple(tool for tool in offered if tool.name == request.tool_choice.removeprefix("function:"))
        messages = _with_system(messages, tools.instruction(offered, required=request.tool_call_forced).content)
        if request.tool_call_forced:
            schema, param = tools.call_schema(offered), "tools"
    response_format = request.response_format or {"type": "text"}
    if schema is None and response_format["type"] == "json_object":
        grammar = JSON_OBJECT_GRAMMAR
    elif schema is None and response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema") or {}
    if schema is not None:
        try:
            grammar = json_schema_grammar(schema)
        except SchemaNotSupported as problem:
            raise InvalidRequest(f"'{param}' has a JSON schema this server cannot enforce: {problem}", param=param) from None
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
    draft: RequestDraft,
    key: ApiKey | None,
    id_prefix: str,
) -> Generation:
    """Resolve and (lazily) load the model, queue the jobs and wait until their prompts are
    accepted.

    Errors found before any output (unknown model, failed load, prompt too long) are raised here,
    so they become HTTP errors rather than stream events. The generation's events fill in the
    draft; its record is saved before the last event is handed on.
    """
    draft.stream, draft.model = stream, model or ""
    manager = model_manager()
    model_file = manager.resolve(model, allowed=key.allowed_models if key else None)
    draft.model = model_file.name
    if 0 < manager.config.max_queue < len(jobs):  # would never fit the queue: retrying cannot help
        raise InvalidRequest(
            f"At most {manager.config.max_queue} prompts per request (model_manager.max_queue).", param="prompt"
        )
    started: list[tuple[QueuedJob, AsyncIterator[JobEvent]]] = []
    try:
        for job in jobs:
            queued = await manager.submit(model_file, job)
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
    per_job = jobs[0].n if isinstance(jobs[0], GenerationJob) else 1
    events = started[0][1] if len(started) == 1 else _merged([events for _, events in started], per_job)
    generation = Generation(
        model=model_file.name,
        prompt_tokens=draft.prompt_tokens,
        cached_tokens=sum(event.cached_tokens for event in accepted),
        choices=per_job * len(jobs),
        events=_recorded(events, draft, per_job * len(jobs)),
    )
    generation.id = draft.completion_id = f"{id_prefix}{generation.id}"
    return generation


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


async def _recorded(events: AsyncIterator[JobEvent], draft: RequestDraft, choices: int) -> AsyncIterator[JobEvent]:
    """The events, noting what the client has been handed; the record is saved before the last
    choice's Finished is handed on."""
    tokens: dict[int, int] = {}
    finished = 0
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                if draft.first_token_at is None:
                    draft.first_token_at = time.monotonic()
                    draft.ttft_ms = round((draft.first_token_at - draft.started) * 1000, 1)
                tokens[event.index] = event.completion_tokens
            elif isinstance(event, Finished):
                tokens[event.index] = event.completion_tokens
                finished += 1
                draft.finish_reason = event.finish_reason
                if finished == choices:
                    draft.completion_tokens = sum(tokens.values())
                    await request_record_save(draft)
            draft.completion_tokens = sum(tokens.values())
            yield event
    except ApiError as exc:  # failed after the output began
        draft.fail(status=RequestRecord.Status.ERROR, http_status=exc.status, code=exc.code, message=exc.message)
        raise
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        if not draft.saved:
            if draft.status == RequestRecord.Status.OK:  # the client went away
                draft.fail(
                    status=RequestRecord.Status.CANCELLED,
                    http_status=200 if draft.stream else CLIENT_CLOSED_REQUEST,
                    code=None,
                    message="",
                )
            await request_record_save(draft)


# nginx's status for "the client closed the connection before the response".
CLIENT_CLOSED_REQUEST = 499

# One thread writes the records, in order, off the event loop.
_records_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")


async def request_record_save(draft: RequestDraft) -> None:
    """Write the draft's RequestRecord (and its daily rollup) and announce it on the live feed.

    Runs off the event loop. A database problem is logged and never fails the request.
    """
    draft.saved = True
    finished = time.monotonic()
    duration_ms = round((finished - draft.started) * 1000, 1)
    metrics.request_count(
        model=draft.model, endpoint=draft.endpoint, status=draft.status, http_status=draft.http_status,
        prompt_tokens=draft.prompt_tokens, completion_tokens=draft.completion_tokens, ttft_ms=draft.ttft_ms,
        duration_ms=duration_ms,
    )
    if not get_config().records.request_records:
        return
    if draft.first_token_at is not None and draft.completion_tokens > 1:
        generating = finished - draft.first_token_at
        draft.tokens_per_second = round((draft.completion_tokens - 1) / generating, 2) if generating else None
    loop = asyncio.get_running_loop()
    try:
        record = await loop.run_in_executor(_records_executor, _request_record_write, draft, duration_ms)
    except DatabaseError as exc:
        logger.error("could not record request %s on %s: %s", draft.completion_id, draft.model, exc)
        return
    await request_feed_publish(record)


def _request_record_write(draft: RequestDraft, duration_ms: float) -> RequestRecord:
    with transaction.atomic():
        record = RequestRecord.objects.create(
            instance=get_config().server.instance,
            duration_ms=duration_ms,
            **{
                name: getattr(draft, name)
                for name in _DRAFT_FIELDS
            },
        )
        daily_usage_add(record)
    return record


_DRAFT_FIELDS = (
    "completion_id", "model", "endpoint", "stream", "status", "http_status", "error_code",
    "error_message", "prompt_tokens", "completion_tokens", "finish_reason", "queue_wait_ms",
    "load_ms", "ttft_ms", "tokens_per_second", "client_address", "user_agent", "end_user", "api_key",
    "created_at",
)


def daily_usage_add(record: RequestRecord) -> None:
    """Count one record into its model's rollup for its UTC day (inside the caller's transaction)."""
    usage, _ = DailyUsage.objects.select_for_update().get_or_create(
        instance=record.instance,
        day=record.created_at.astimezone(UTC).date(),
        model=record.model,
        api_key=record.api_key,
    )
    usage.count_request(
        record.status, record.prompt_tokens, record.completion_tokens, record.ttft_ms, record.tokens_per_second
    )
    usage.save()


REQUEST_FEED_GROUP = "request-feed"


async def request_feed_publish(record: RequestRecord) -> None:
    """Push a finished request to the dashboards' live feed (Channels group)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(REQUEST_FEED_GROUP, {"type": "request.finished", "record": feed_item(record)})
    except Exception as exc:  # the feed is best effort: a full or broken layer never fails a request
        logger.warning("could not publish request %s to the live feed: %s", record.completion_id, exc)


def feed_item(record: RequestRecord) -> dict[str, Any]:
    return {
        "created_at": record.created_at.isoformat(),
        "instance": record.instance,
        "model": record.model,
        "endpoint": record.endpoint,
        "status": record.status,
        "http_status": record.http_status,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.duration_ms,
        "tokens_per_second": record.tokens_per_second,
    }


async def model_load(*, model: str, reason: LoadReason) -> str:
    """Load a model now (if it is not loaded yet); returns its name."""
    manager = model_manager()
    model_file = manager.resolve(model)
    await manager.acquire(model_file, reason)
    return model_file.name


async def _unloaded(workers: list[ModelWorker]) -> list[str]:
    """Wait until the workers have freed their models; their names."""
    await asyncio.gather(*(asyncio.to_thread(worker.join) for worker in workers))
    return sorted(worker.model.name for worker in workers)


async def model_unload(*, model: str, reason: LoadReason) -> dict[str, list[str]]:
    """Unload a model or "all": idle ones now, busy ones when their running requests end."""
    now, pending = model_manager().unload(model, reason)
    return {"unloaded": await _unloaded(now), "pending": sorted(w.model.name for w in pending)}


async def models_reap() -> dict[str, list[str]]:
    """Run the idle check now; the models it unloaded."""
    return {"unloaded": await _unloaded(model_manager().reap())}


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
    changes, gone = model_manager().reload(config.model_manager)
    await _unloaded(gone)
    await sync_to_async(discovered_models_sync)(models=model_manager().available())
    logger.info(
        "reloaded %s: added %s, removed %s, changed %s",
        config.path,
        changes.added or "none",
        changes.removed or "none",
        changes.changed or "none",
    )
    return {"added": changes.added, "removed": changes.removed, "changed": changes.changed}


def load_event_record(sender: Any, *, event: LifecycleEvent, **_: Any) -> None:
    """Receiver of `model_lifecycle`: one LoadEvent row per load, failed load and unload."""
    LoadEvent.objects.create(instance=get_config().server.instance, **asdict(event))


def model_settings_overrides(name: str) -> dict[str, Any]:
    """The settings saved for a model in the admin (those left empty are not overrides)."""
    try:
        row = DiscoveredModel.objects.filter(instance=get_config().server.instance, name=name).first()
    except DatabaseError as exc:
        logger.error("could not read the saved settings of %s (config.json's apply): %s", name, exc)
        return {}
    if row is None:
        return {}
    return {key: value for key in DiscoveredModel.SETTING_FIELDS if (value := getattr(row, key)) is not None}


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
