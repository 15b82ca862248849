"""Reads: the models on disk, the loaded models, server health."""

from __future__ import annotations

import time
from typing import Any

from inference.apps import PROCESS_STARTED
from inference.discovery import ModelFile
from inference.manager import model_manager

def model_list() -> dict[str, ModelFile]:
    return model_manager().available()


def model_get(name: str) -> ModelFile:
    """One model by name (`.gguf` optional); raises ModelNotFound."""
    return model_manager().resolve(name)


def health() -> dict[str, Any]:
    manager = model_manager()
    return {
        "status": "ok",
        "loaded_models": manager.loaded_models(),
        "uptime": round(time.monotonic() - PROCESS_STARTED, 1),
        "models": manager.status(),
    }
