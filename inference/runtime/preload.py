"""Warm start: which of the models named for `model_manager.preload` to load, within the pool's
limits.

`inference.services.models.models_preload` names the candidates (config.json's list, or for "auto" the
models this instance served the most requests for in the last 24 hours), asks `preload_plan`
which of them fit together — at most `max_loaded_models`, their memory estimates within
`max_memory_mb` — and loads those one at a time once the server answers. A preload never unloads
a model to make room: `ModelPool.has_room` is asked again before each load.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from inference.runtime.catalog import ModelFile
from inference.runtime.errors import ModelNotFound, ModelTooLarge
from inference.runtime.memory import MIB, memory_needed
from inference.runtime.pool import ModelPool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preload:
    """A model to load at start, and its memory estimate (0 without max_memory_mb)."""

    model: ModelFile
    memory_bytes: int


def preload_plan(names: Sequence[str], pool: ModelPool, *, named: bool) -> list[Preload]:
    """The models of `names`, in their order, that fit the pool together; the others are
    skipped with a log line. A name that is no model here is a warning when config.json
    `named` it, and skipped quietly when it came from the records (its file may be gone). Reads
    the models' headers: not on the event loop."""
    config = pool.config
    limit = config.max_memory_mb * MIB
    plan: list[Preload] = []
    for name in names:
        try:
            model = pool.catalog.resolve(name)
        except ModelNotFound:
            if named:
                logger.warning("preload: %s is not a model in %s; skipped", name, config.models_directory)
            continue
        if any(chosen.model.name == model.name for chosen in plan):
            continue
        if len(plan) == config.max_loaded_models:
            logger.info("preload: %s skipped: max_loaded_models (%d) reached", model.name, config.max_loaded_models)
            continue
        needed = 0
        if limit:
            try:
                needed = memory_needed(model, config.settings_for(model.name), limit)
            except ModelTooLarge as too_large:
                logger.warning(
                    "preload: %s skipped: it needs %s, more than max_memory_mb (%d MB)",
                    model.name,
                    too_large.estimate,
                    too_large.limit_mb,
                )
                continue
            planned = sum(chosen.memory_bytes for chosen in plan)
            if planned + needed > limit:
                logger.info(
                    "preload: %s skipped: its %d MB beside the %d MB already planned exceed max_memory_mb (%d MB)",
                    model.name,
                    needed // MIB,
                    planned // MIB,
                    config.max_memory_mb,
                )
                continue
        plan.append(Preload(model, needed))
    return plan
