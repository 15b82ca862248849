"""A fake engine for driving model pools and workers fast, and helpers around it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from inference.config import MODEL_KEYS, ModelManagerConfig, load_config
from inference.runtime.channel import Job
from inference.runtime.jobs import ChatJob, ChatMessage, Finished, JobEvent, Prepared, PromptAccepted, TextDelta
from inference.runtime.pool import ModelPool
from inference.runtime.settings import LoadSettings


def job_text(job: ChatJob) -> str:
    """What a chat job says: its rendered prompt (from the API), or its last message."""
    return job.prompt_text if job.prompt_text is not None else job.messages[-1].content


class FakeEngine:
    """Loads slowly; runs up to `parallel` jobs, each generating one numbered piece per 10 ms step;
    records what it ran."""

    def __init__(self, log: list[str], name: str, path: Path, settings: LoadSettings) -> None:
        time.sleep(0.1)
        self.niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # its worker thread's
        self.name, self.settings, self.log = name, settings, log
        self.n_ctx, self.parallel = settings.n_ctx, settings.parallel
        self.sequences: dict = {}
        log.append(f"load {name}")

    @property
    def running(self) -> int:
        return len(self.sequences)

    @property
    def free_slots(self) -> int:
        return self.parallel - self.running

    def prepare(self, job: ChatJob) -> Prepared:
        return Prepared(job, [1, 2, 3], ())

    def start(self, key, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted:
        self.log.append(f"run {job_text(prepared.job)}")
        self.sequences[key] = [prepared.job, 0, cancelled]
        return PromptAccepted(prompt_tokens=3)

    def step(self) -> list:
        time.sleep(0.01)
        events = []
        for key, sequence in list(self.sequences.items()):
            job, generated, cancelled = sequence
            if cancelled():
                events.append((key, Finished("cancelled", 3, generated)))
                del self.sequences[key]
                continue
            sequence[1] = generated = generated + 1
            events.append((key, TextDelta(f"{generated} ", generated)))
            if generated >= (job.max_tokens or 3):
                events.append((key, Finished("length", 3, generated)))
                del self.sequences[key]
        return events

    def keep_prompt_cache(self) -> None:
        pass

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def make_pool(models: Path, log: list[str], factory: Callable | None = None, **settings) -> ModelPool:
    """A pool over `models` with fake engines (`factory(name, path, settings)`: they report no load
    progress); settings: model_manager keys, model ones too."""
    build = factory or (lambda *args: FakeEngine(log, *args))
    return ModelPool(pool_config(models, **settings), lambda name, path, load, _progress: build(name, path, load))


def pool_config(directory: Path, **settings) -> ModelManagerConfig:
    base = load_config(directory.parent / "absent.json").model_manager
    model_settings = {key: value for key, value in settings.items() if key in MODEL_KEYS}
    manager_settings = {key: value for key, value in settings.items() if key not in MODEL_KEYS}
    defaults = replace(base.defaults, **model_settings)
    return replace(base, models_directory=directory, defaults=defaults, **manager_settings)


def chat(text: str, max_tokens: int = 3) -> ChatJob:
    return ChatJob(messages=(ChatMessage("user", text),), max_tokens=max_tokens)


async def drain(job: Job) -> list[JobEvent]:
    return [event async for event in job.events()]


async def collect(pool: ModelPool, model: str, job: ChatJob) -> list[JobEvent]:
    return await drain(await pool.submit(pool.catalog.resolve(model), job))


async def until(condition: Callable[[], bool], seconds: float = 15) -> None:
    """Wait (on the event loop) until `condition()` holds; fail after `seconds`."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")
