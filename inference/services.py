"""Use cases that change state: chat completions, loading and unloading models, reloading the
configuration, and the records they leave in the database."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError

from inference.config import ConfigError, get_config, load_config, set_config
from inference.discovery import GGUFError, ModelFile, read_gguf_info
from inference.errors import InvalidRequest
from inference.jobs import ChatCompletion, ChatJob, PromptAccepted
from inference.lifecycle import LifecycleEvent, LoadReason
from inference.manager import ModelWorker, model_manager
from inference.models import DiscoveredModel, LoadEvent

logger = logging.getLogger(__name__)


async def chat_completion_create(*, model: str | None, job: ChatJob) -> ChatCompletion:
    """Resolve and (lazily) load the model, queue the job and wait until its prompt is accepted.

    Errors found before any output (unknown model, failed load, prompt too long) are raised here,
    so they become HTTP errors rather than stream events.
    """
    manager = model_manager()
    model_file = manager.resolve(model)
    events = (await manager.submit(model_file, job)).events()
    try:
        accepted = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    assert isinstance(accepted, PromptAccepted)
    return ChatCompletion(model=model_file.name, prompt_tokens=accepted.prompt_tokens, events=events)


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
