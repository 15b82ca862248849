"""Reads: the models on disk, the loaded models, server health, usage summaries, stored responses."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from inference.runtime.catalog import ModelFile, strip_suffix
from inference.runtime.errors import ModelNotFound, NoModelGiven
from inference.runtime.gguf_header import GGUFError, read_gguf_info
from inference.runtime.pool import model_pool
from inference.runtime.worker import WorkerStatus

# Taken when this module is first imported: when Django loads its apps (InferenceConfig.ready
# imports the services, which import this), i.e. when the server process starts (/health's uptime).
PROCESS_STARTED = time.monotonic()


def model_list(allowed: list[str] | None = None) -> dict[str, ModelFile]:
    """The models on disk, then the aliases of those (name → model); with `allowed` (an API
    key's models), only those."""
    catalog = model_pool().catalog
    models = catalog.available()
    if allowed:
        models = {name: model for name, model in models.items() if name in allowed}
    return {**models, **catalog.aliases(models)}


def model_get(name: str, allowed: list[str] | None = None) -> tuple[str, ModelFile]:
    """One model by name or alias (`.gguf` optional) and the id it goes by; raises ModelNotFound."""
    return strip_suffix(name), model_pool().catalog.resolve(name, allowed=allowed)


def model_served_here(name: str, allowed: list[str] | None = None) -> bool:
    """Whether this server has the model (by name or alias), for this key."""
    try:
        model_pool().catalog.resolve(name, allowed=allowed)
    except ModelNotFound:
        return False
    return True


def loaded_model_names() -> list[str]:
    return model_pool().loaded_models()


def health() -> dict[str, Any]:
    """/health's body: the loaded models, the uptime, and every worker's status."""
    pool = model_pool()
    return {
        "status": "ok",
        "loaded_models": pool.loaded_models(),
        "uptime": round(time.monotonic() - PROCESS_STARTED, 1),
        "models": {name: worker_status_body(status) for name, status in pool.status().items()},
    }


def worker_status_body(status: WorkerStatus) -> dict[str, Any]:
    """A worker's status as /health shows it."""
    return {
        "state": str(status.state),
        "in_flight": status.in_flight,
        "slots_busy": status.slots_busy,
        "queued": status.queued,
        "idle_seconds": round(status.idle_seconds, 1),
        "expires_at": expires_at(status),
        "pinned": status.pinned,
        "load_percent": status.load_percent,
    }


def expires_at(status: WorkerStatus) -> str | None:
    """When the idle check will unload the worker, as an ISO UTC time (None: it will not)."""
    if status.expires_in is None:
        return None
    return (datetime.now(UTC) + timedelta(seconds=status.expires_in)).isoformat()


def models_with_state() -> list[dict[str, Any]]:
    """Every model on disk, by name: its state in the pool ("unloaded" if it has none), whether
    it has a chat template (the GGUF header's; a `chat_format` setting also counts) and what its
    requests may hold (`input_modalities`, as in /v1/models)."""
    pool = model_pool()
    states = pool.status()
    return [
        {
            "name": name,
            "state": str(states[name].state) if name in states else "unloaded",
            "chat": _can_chat(model),
            "input_modalities": model.input_modalities,
        }
        for name, model in sorted(pool.catalog.available().items())
    ]


def _can_chat(model: ModelFile) -> bool:
    if model_pool().catalog.config.settings_for(model.name).chat_format:
        return True
    try:
        return read_gguf_info(model.path).chat_template is not None
    except GGUFError:
        return False


def default_model_name() -> str | None:
    """The model a request without one gets, if there is one."""
    try:
        return model_pool().catalog.resolve(None).name
    except (ModelNotFound, NoModelGiven):
        return None
