"""Reads: the models on disk, the loaded models, server health, usage summaries, stored responses."""

from __future__ import annotations

import time
from typing import Any

from inference.runtime.catalog import GGUFError, ModelFile, read_gguf_info, strip_suffix
from inference.runtime.errors import ModelNotFound, NoModelGiven
from inference.runtime.pool import model_pool

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
    pool = model_pool()
    return {
        "status": "ok",
        "loaded_models": pool.loaded_models(),
        "uptime": round(time.monotonic() - PROCESS_STARTED, 1),
        "models": pool.status(),
    }


def models_with_state() -> list[dict[str, Any]]:
    """Every model on disk, by name: its state in the pool ("unloaded" if it has none) and
    whether it has a chat template (the GGUF header's; a `chat_format` setting also counts)."""
    pool = model_pool()
    states = pool.status()
    return [
        {"name": name, "state": states.get(name, {}).get("state", "unloaded"), "chat": _can_chat(model)}
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


