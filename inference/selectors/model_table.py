"""Reads: the models table of the console's models page, `GET /admin/models` and `manage.py
models` — one row per model this server has (and per embedding context it has loaded), with what
the runtime knows now and what the records say about today (UTC).

It reads the runtime and the database (three indexed queries, whatever the number of records):
call it off the event loop.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from django.db.models import Count, Max, Q, QuerySet, Sum

from inference.config import ModelSettings, get_config
from inference.models import DiscoveredModel, LoadEvent, RequestRecord
from inference.runtime.catalog import ModelFile
from inference.runtime.lifecycle import LifecycleKind
from inference.runtime.memory import MIB, model_memory_estimate
from inference.runtime.pool import model_pool
from inference.runtime.worker import ModelWorker, WorkerState
from inference.selectors.capabilities import model_capabilities
from inference.selectors.models import PROCESS_STARTED, expires_at

UNLOADED = "unloaded"
FAILED = "failed"  # its last load since the server started failed, and it is not loaded


@dataclass(frozen=True)
class ModelRow:
    name: str
    state: str  # loading, loaded, unloading, unloaded, failed
    load_percent: int | None  # while loading
    memory_mb: int | None  # the estimate (runtime.memory); None: the header cannot be read
    input_modalities: list[str]  # ["text"], or ["text", "image"] with a projector
    capabilities: list[
        str
    ]  # selectors.capabilities: chat, tools, thinking, vision, embeddings, rerank, fill-in-the-middle
    slots_busy: int  # taken by the running requests (one per choice: n)
    parallel: int
    queued: int
    expires_at: str | None  # when the idle check unloads it (ISO 8601); None: it would not
    pinned: bool
    requests_today: int
    prompt_tokens_today: int
    completion_tokens_today: int
    cached_tokens_today: int
    cache_hit_rate: float | None  # cached of prompt tokens today; None: no prompt tokens
    last_load_reason: str  # why it was last loaded ("" if never)
    last_load_at: str | None
    error: str  # why its load failed, when failed


@dataclass(frozen=True)
class ModelTable:
    rows: list[ModelRow]
    memory_budget_mb: int  # model_manager.max_memory_mb; 0: no budget
    memory_loaded_mb: int  # the estimates of the models loaded or loading

    def as_dict(self) -> dict[str, Any]:
        return {
            "models": [asdict(row) for row in self.rows],
            "memory_budget_mb": self.memory_budget_mb,
            "memory_loaded_mb": self.memory_loaded_mb,
        }


def model_table() -> ModelTable:
    pool = model_pool()
    instance = get_config().server.instance
    models = pool.catalog.available()
    workers = {worker.name: worker for worker in pool.workers()}  # a registered one wins over an unloading one
    names = sorted(set(models) | set(workers))
    overrides = {row.name: row.setting_overrides() for row in DiscoveredModel.objects.filter(instance=instance)}
    usage = _usage_today(instance, names)
    events = _last_events(instance, names)
    rows = []
    for name in names:
        worker = workers.get(name)
        settings = worker.settings if worker else pool.config.settings_for(name, overrides.get(name))
        model = worker.model if worker else models[name]
        rows.append(_row(name, model, settings, worker, usage.get(name, {}), events.get(name, {})))
    active = (WorkerState.LOADING, WorkerState.LOADED)
    return ModelTable(
        rows=rows,
        memory_budget_mb=pool.config.max_memory_mb,
        memory_loaded_mb=sum(row.memory_mb or 0 for row in rows if row.state in active),
    )


def _row(
    name: str,
    model: ModelFile,
    settings: ModelSettings,
    worker: ModelWorker | None,
    usage: dict[str, int],
    events: dict[str, LoadEvent],
) -> ModelRow:
    status = worker.status() if worker else None
    last_event = events.get("last")
    state = str(status.state) if status else UNLOADED
    if state == UNLOADED and last_event is not None and last_event.kind == LifecycleKind.LOAD_FAILED:
        state = FAILED
    estimate = model_memory_estimate(model, settings)
    memory_bytes = worker.memory_bytes if worker and worker.memory_bytes else estimate.total if estimate else None
    prompt_tokens = usage.get("prompt_tokens") or 0
    cached_tokens = usage.get("cached_tokens") or 0
    loaded = events.get("load")
    return ModelRow(
        name=name,
        state=state,
        load_percent=status.load_percent if status else None,
        memory_mb=None if memory_bytes is None else round(memory_bytes / MIB),
        input_modalities=model.input_modalities,
        capabilities=model_capabilities(model, settings),
        slots_busy=status.slots_busy if status else 0,
        parallel=1 if worker and worker.embedding else settings.parallel,
        queued=status.queued if status else 0,
        expires_at=expires_at(status) if status else None,
        pinned=settings.pinned,
        requests_today=usage.get("requests") or 0,
        prompt_tokens_today=prompt_tokens,
        completion_tokens_today=usage.get("completion_tokens") or 0,
        cached_tokens_today=cached_tokens,
        cache_hit_rate=round(cached_tokens / prompt_tokens, 3) if prompt_tokens else None,
        last_load_reason=loaded.reason if loaded else "",
        last_load_at=loaded.created_at.isoformat() if loaded else None,
        error=last_event.error if state == FAILED and last_event else "",
    )


def usage_today_query(instance: str, models: list[str]) -> QuerySet[RequestRecord, dict[str, Any]]:
    """This server's requests and tokens per model since 00:00 UTC: one aggregate over today's
    records of these models, read through the (model, created_at) index: a day of records, not
    all of them. (Without the models named, SQLite scans that index whole to group by model.)"""
    today = datetime.combine(datetime.now(UTC).date(), clock_time(), UTC)
    return (
        RequestRecord.objects.filter(model__in=models, created_at__gte=today, instance=instance)
        .order_by()
        .values("model")
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cached_tokens=Sum("cached_tokens"),
        )
    )


def _usage_today(instance: str, models: list[str]) -> dict[str, dict[str, int]]:
    return {row.pop("model"): row for row in usage_today_query(instance, models)}


def _last_events(instance: str, names: list[str]) -> dict[str, dict[str, LoadEvent]]:
    """Per model: its last load ("load") and, since this server started, its last lifecycle
    event of any kind ("last": a failed load shows as the model's state)."""
    started = datetime.now(UTC) - timedelta(seconds=time.monotonic() - PROCESS_STARTED)
    latest = (
        LoadEvent.objects.filter(instance=instance, model__in=names)
        .order_by()
        .values("model")
        .annotate(load=Max("id", filter=Q(kind=LifecycleKind.LOAD)), last=Max("id", filter=Q(created_at__gte=started)))
    )
    wanted = {(row["model"], key): row[key] for row in latest for key in ("load", "last") if row[key]}
    found = LoadEvent.objects.in_bulk(set(wanted.values()))
    events: dict[str, dict[str, LoadEvent]] = {}
    for (model, key), event_id in wanted.items():
        events.setdefault(model, {})[key] = found[event_id]
    return events
