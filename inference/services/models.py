"""Use cases that change which models are loaded and how: load, preload, unload, pin, reap,
reload the configuration; the admin's rows of the discovered models and their load events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError

from inference.config import AUTO_PRELOAD, ConfigError, ModelManagerConfig, get_config, load_config, set_config
from inference.connections import database_call, error_line, on_passing_connection
from inference.errors import DatabaseUnavailable, InvalidRequest
from inference.models import DiscoveredModel, LoadEvent
from inference.records.writer import writer
from inference.runtime.catalog import ModelChanges, ModelFile, split_parts, strip_suffix
from inference.runtime.errors import ShuttingDown
from inference.runtime.gguf_header import GGUFError, read_gguf_info
from inference.runtime.lifecycle import LifecycleEvent, LoadReason
from inference.runtime.pool import model_pool
from inference.runtime.preload import preload_plan
from inference.runtime.worker import ModelWorker
from inference.selectors.usage import most_requested_models

logger = logging.getLogger(__name__)


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
                lambda: most_requested_models(since=since, instance=instance), needed_for="the records"
            )
        except (DatabaseUnavailable, DatabaseError) as error:
            logger.error("preload: the most requested models are unknown, nothing preloaded: %s", error_line(error))
            return []
    plan = await asyncio.to_thread(preload_plan, names, pool, named=not auto)
    logger.info(
        "preload (%s): %s",
        preload if auto else "list",
        ", ".join(chosen.model.name for chosen in plan) or "nothing to load",
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
    changes = await _rediscovered(config.model_manager)
    logger.info(
        "reloaded %s: added %s, removed %s, changed %s",
        config.path,
        changes.added or "none",
        changes.removed or "none",
        changes.changed or "none",
    )
    return {"added": changes.added, "removed": changes.removed, "changed": changes.changed}


async def _rediscovered(config: ModelManagerConfig) -> ModelChanges:
    """Put `config` in force and rediscover the models directory: loaded models whose file is
    gone are unloaded (once their running requests end), the admin's rows brought in line."""
    changes, gone = model_pool().reload(config)
    await _unloaded(gone)
    models = model_pool().catalog.available()
    await database_call(lambda: discovered_models_sync(models=models), needed_for="the models' admin rows")
    return changes


async def model_delete(*, model: str) -> str:
    """Delete a model's file (every part of a split one) from the models directory and
    rediscover (a loaded model is unloaded); returns its name. Its projector stays. An alias is
    refused (delete the model it names), an unknown name raises ModelNotFound."""
    pool = model_pool()
    name = strip_suffix(model)
    available = pool.catalog.available()
    if name not in available:
        if name in pool.config.aliases:
            raise InvalidRequest(
                f"'{name}' is an alias of {pool.config.aliases[name]}: delete that model", param="model"
            )
        raise pool.catalog.not_found(name, available)
    found = available[name]
    files = split_parts(found.path, name) or [found.path]
    await asyncio.to_thread(lambda: [path.unlink(missing_ok=True) for path in files])
    logger.info("deleted %s (%s)", name, ", ".join(path.name for path in files))
    await _rediscovered(pool.config)
    return name


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
            row.projector = str(model.projector or "")
            row.present, row.missing_since, row.last_seen_at = True, None, now
            row.save()
        DiscoveredModel.objects.filter(instance=instance, present=True).exclude(name__in=list(models)).update(
            present=False, missing_since=now
        )
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
