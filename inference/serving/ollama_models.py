"""Ollama's model endpoints: /api/tags (the models on disk, aliases too), /api/show (one model:
its details, GGUF metadata, the parameters this server runs it with, its chat template and what
it can do), /api/ps (the loaded models), and the admin's /api/pull (a pull of services.pulls,
its progress as Ollama's status lines) and /api/delete.

Headers are read off the event loop (once per file version: runtime.gguf_header caches them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from inference.errors import InvalidRequest, PullFailed
from inference.protocol.ollama import OllamaPull, model_name
from inference.protocol.ollama_output import (
    model_entry,
    ndjson_line,
    pull_status,
    running_entry,
    show_body,
    timestamp,
)
from inference.pulling import PullError
from inference.runtime.catalog import ModelFile
from inference.runtime.errors import TemplateRejected
from inference.runtime.gguf_header import GGUFError, GGUFInfo, read_gguf_info
from inference.runtime.pool import model_pool
from inference.runtime.settings import context_length
from inference.runtime.worker import ModelWorker, WorkerState
from inference.selectors import models as model_selectors
from inference.selectors.capabilities import model_capabilities
from inference.services.pulls import PullJob, pull_jobs
from inference.serving.prompts import model_format

# /api/ps's expires_at of a model that stays loaded (pinned, or idle_timeout / keep_alive -1).
FOREVER = "9999-12-31T23:59:59Z"


def _info(model: ModelFile) -> GGUFInfo | None:
    try:
        return read_gguf_info(model.path)
    except GGUFError:
        return None


# Ollama's words for what a model can do (selectors.capabilities'); "completion" is every model's.
OLLAMA_CAPABILITIES = {
    "tools": "tools",
    "thinking": "thinking",
    "vision": "vision",
    "embeddings": "embedding",
    "fill-in-the-middle": "insert",
}


async def ollama_tags(*, allowed: list[str] | None) -> dict[str, Any]:
    """Every model (and alias) the key may use, as `NAME:latest`."""
    models = model_selectors.model_list(allowed=allowed)
    infos = await asyncio.to_thread(lambda: {name: _info(model) for name, model in models.items()})
    return {"models": [model_entry(name, model, infos[name]) for name, model in models.items()]}


async def ollama_show(*, named: str, allowed: list[str] | None) -> dict[str, Any]:
    """One model (raises ModelNotFound): what /api/show tells of it."""
    name, model = model_selectors.model_get(model_name(named), allowed=allowed)
    try:
        form = await model_format(name, allowed)
        template = form.template
    except TemplateRejected:  # its chat requests say why
        form, template = None, None
    info = await asyncio.to_thread(_info, model)
    pool = model_pool()
    settings = form.settings if form else pool.config.settings_for(model.name)
    worker = pool.worker(model.name)
    if worker is not None and worker.load_settings is not None:
        n_ctx = worker.load_settings.n_ctx
    else:
        n_ctx = context_length(settings.n_ctx, info.context_length if info else None)
    capabilities = ["completion"] + [
        OLLAMA_CAPABILITIES[name]
        for name in await asyncio.to_thread(model_capabilities, model, settings)
        if name in OLLAMA_CAPABILITIES
    ]
    return show_body(
        model,
        info,
        parameters={"num_ctx": n_ctx, **settings.sampling_defaults()},
        template=template.source if template else "",
        capabilities=capabilities,
    )


def _expires_at(worker: ModelWorker) -> str:
    status = worker.status()
    if status.expires_in is None and (worker.settings.pinned or worker.idle_timeout < 0):
        return FOREVER
    # None while busy: its idle clock starts when it is done.
    seconds = worker.idle_timeout if status.expires_in is None else status.expires_in
    return timestamp(time.time() + seconds)


async def ollama_ps(*, allowed: list[str] | None) -> dict[str, Any]:
    """The loaded (and loading) models the key may use: one entry per model, its chat and
    embedding contexts together."""
    by_model: dict[str, list[ModelWorker]] = {}
    for worker in model_pool().workers():
        if worker.state in (WorkerState.LOADING, WorkerState.LOADED) and (not allowed or worker.model.name in allowed):
            by_model.setdefault(worker.model.name, []).append(worker)
    infos = await asyncio.to_thread(lambda: {name: _info(workers[0].model) for name, workers in by_model.items()})
    entries = []
    for name, workers in sorted(by_model.items()):
        first = min(workers, key=lambda worker: worker.embedding)  # the chat context, if loaded
        entries.append(
            running_entry(
                name,
                first.model,
                infos[name],
                memory_bytes=sum(worker.memory_bytes for worker in workers),
                n_ctx=first.load_settings.n_ctx if first.load_settings else 0,
                expires_at=max(_expires_at(worker) for worker in workers),
            )
        )
    return {"models": entries}


def ollama_pull_start(*, request: OllamaPull) -> PullJob:
    """Start pulling a GGUF file by URL (a 400 for what is wrong before it starts)."""
    try:
        return pull_jobs().start(url=request.url, name=None, sha256=None, started_by="/api/pull")
    except PullError as refused:
        raise InvalidRequest(str(refused), param="model") from None


async def ollama_pull_lines(job: PullJob, request: OllamaPull) -> AsyncIterator[bytes]:
    """The pull's progress as Ollama's status lines, until `success` (or an `{"error"}` line).
    A client that leaves does not stop the pull (the models page shows it, and can cancel it)."""
    sent: dict[str, Any] = {}
    async for snapshot in pull_jobs().follow(job):
        if (status := pull_status(snapshot)) != sent:  # a phase's first report repeats its start
            sent = status
            yield ndjson_line(status)


async def ollama_pull_body(job: PullJob, request: OllamaPull) -> dict[str, Any]:
    """The pull's last status (`stream: false`): `success`, or an error (a 500 naming it)."""
    last: dict[str, Any] = {}
    async for snapshot in pull_jobs().follow(job):
        last = snapshot
    status = pull_status(last)
    if "error" in status:
        raise PullFailed(status["error"])
    return status
