"""The model pool's timing logic, driven fast by a fake engine (real-model tests are elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from inference.config import MODEL_KEYS, ModelManagerConfig, load_config
from inference.runtime.channel import Job
from inference.runtime.errors import AllPinned, LoadFailed, ModelNotFound, ModelTooLarge, NoModelGiven, QueueFull
from inference.runtime.jobs import ChatJob, ChatMessage, Finished, JobEvent, Prepared, PromptAccepted, TextDelta
from inference.runtime.lifecycle import LifecycleEvent, LoadReason, model_lifecycle
from inference.runtime.llama import LlamaLoadError
from inference.runtime.pool import ModelPool
from inference.runtime.settings import LoadSettings
from tests.gguf_files import write_synthetic


# Worker threads record their lifecycle in the database.
pytestmark = pytest.mark.django_db(transaction=True)


class FakeEngine:
    """Loads slowly; runs up to `parallel` jobs, each generating one numbered piece per 10 ms step;
    records what it ran."""

    def __init__(self, log: list[str], name: str, path: Path, settings: LoadSettings) -> None:
        time.sleep(0.1)
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
        self.log.append(f"run {prepared.job.messages[0].content}")
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

    def close(self) -> None:
        self.log.append(f"close {self.name}")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    for name in ("alpha", "beta"):
        write_synthetic(directory / f"{name}.gguf", context_length=1024)
    return directory


def make_manager(models: Path, log: list[str], factory: Callable | None = None, **settings) -> ModelPool:
    """A manager over `models` with fake engines; settings: model_manager keys, model ones too."""
    return ModelPool(manager_config(models, **settings), factory or (lambda *args: FakeEngine(log, *args)))


def manager_config(directory: Path, **settings) -> ModelManagerConfig:
    base = load_config(directory.parent / "absent.json").model_manager
    model_settings = {key: value for key, value in settings.items() if key in MODEL_KEYS}
    manager_settings = {key: value for key, value in settings.items() if key not in MODEL_KEYS}
    defaults = replace(base.defaults, **model_settings)
    return replace(base, models_directory=directory, defaults=defaults, **manager_settings)


@pytest.fixture
def fake(models: Path) -> Iterator[tuple[ModelPool, list[str]]]:
    """A manager over two fake models, and the log of what its fake engines did."""
    log: list[str] = []
    manager = make_manager(models, log)
    yield manager, log
    manager.shutdown()


def chat(text: str, max_tokens: int = 3) -> ChatJob:
    return ChatJob(messages=(ChatMessage("user", text),), max_tokens=max_tokens)


async def drain(job: Job) -> list[JobEvent]:
    return [event async for event in job.events()]


async def collect(manager: ModelPool, model: str, job: ChatJob) -> list[JobEvent]:
    return await drain(await manager.submit(manager.catalog.resolve(model), job))


async def test_concurrent_first_requests_share_one_load(fake: tuple[ModelPool, list[str]]) -> None:
    manager, log = fake
    results = await asyncio.gather(*(collect(manager, "alpha", chat(str(i))) for i in range(4)))
    assert log.count("load alpha") == 1
    assert all(isinstance(events[-1], Finished) for events in results)
    assert manager.loaded_models() == ["alpha"]
    manager.shutdown()
    assert log[-1] == "close alpha"


async def test_jobs_on_one_model_run_in_arrival_order(models: Path) -> None:
    log: list[str] = []
    manager = make_manager(models, log, parallel=1)
    worker = await manager.acquire(manager.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    jobs = [worker.submit(chat(f"job{i}", max_tokens=5)) for i in range(3)]
    assert worker.status()["queued"] + worker.status()["in_flight"] == 3
    outputs = await asyncio.gather(*(drain(job) for job in jobs))
    assert [entry for entry in log if entry.startswith("run")] == ["run job0", "run job1", "run job2"]
    assert all(events[-1].completion_tokens == 5 for events in outputs)
    manager.shutdown()


async def test_a_cancelled_job_stops_and_frees_the_worker(fake: tuple[ModelPool, list[str]]) -> None:
    manager, log = fake
    worker = await manager.acquire(manager.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    long_job = worker.submit(chat("long", max_tokens=10_000))
    events = long_job.events()
    await anext(events)  # prompt accepted: the job is running
    await anext(events)
    await events.aclose()
    follow_up = await collect(manager, "alpha", chat("next"))
    assert follow_up[-1].finish_reason == "length"
    status = worker.status()
    assert (status["in_flight"], status["queued"]) == (0, 0)


async def test_a_job_cancelled_while_queued_never_runs(models: Path) -> None:
    log: list[str] = []
    manager = make_manager(models, log, parallel=1)
    worker = await manager.acquire(manager.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    first = worker.submit(chat("first", max_tokens=20))
    queued = worker.submit(chat("queued"))
    queued.cancel()
    await drain(first)
    await collect(manager, "alpha", chat("last"))
    assert "run queued" not in log
    manager.shutdown()


async def test_different_models_do_not_wait_for_each_other(fake: tuple[ModelPool, list[str]]) -> None:
    manager, log = fake
    alpha = await manager.acquire(manager.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    long_job = alpha.submit(chat("long", max_tokens=300))
    long_events = long_job.events()
    await anext(long_events)
    beta_events = await collect(manager, "beta", chat("short"))
    assert beta_events[-1].finish_reason == "length"
    assert alpha.status()["in_flight"] == 1  # alpha is still generating
    await long_events.aclose()


async def test_a_failed_load_is_reported_and_retried_on_the_next_request(models: Path) -> None:
    log: list[str] = []
    attempts = []

    def flaky(name: str, path: Path, settings: LoadSettings) -> FakeEngine:
        attempts.append(name)
        if len(attempts) == 1:
            raise LlamaLoadError("tensor data is not within the file bounds")
        return FakeEngine(log, name, path, settings)

    manager = make_manager(models, log, flaky)
    with pytest.raises(LoadFailed) as failure:
        await collect(manager, "alpha", chat("one"))
    assert failure.value.model == "alpha" and "not within the file bounds" in failure.value.cause
    assert manager.loaded_models() == []
    events = await collect(manager, "alpha", chat("two"))
    assert events[-1].finish_reason == "length" and len(attempts) == 2
    manager.shutdown()


async def test_unreadable_header_fails_the_load_without_reaching_the_engine(models: Path) -> None:
    (models / "broken.gguf").write_bytes(b"not a model at all")
    log: list[str] = []
    manager = make_manager(models, log)
    with pytest.raises(LoadFailed) as failure:
        await collect(manager, "broken", chat("x"))
    assert (failure.value.file, failure.value.cause) == ("broken.gguf", "not a GGUF file (wrong magic bytes)")
    assert log == []


async def test_context_is_capped_to_what_the_model_was_trained_with(models: Path) -> None:
    settings: list[LoadSettings] = []

    def recording(name: str, path: Path, load: LoadSettings) -> FakeEngine:
        settings.append(load)
        return FakeEngine([], name, path, load)

    for n_ctx in (16384, 0, 256):
        manager = make_manager(models, [], recording, n_ctx=n_ctx, n_threads=3)
        await collect(manager, "alpha", chat("x"))
        manager.shutdown()
    assert [(s.n_ctx, s.n_threads) for s in settings] == [(1024, 3), (1024, 3), (256, 3)]


def test_model_names_resolve_exactly(models: Path) -> None:
    manager = make_manager(models, [], default_model="beta")
    assert manager.catalog.resolve("alpha").name == "alpha"
    assert manager.catalog.resolve("alpha.gguf").name == "alpha"
    assert manager.catalog.resolve(None).name == "beta"
    with pytest.raises(ModelNotFound) as missing:
        manager.catalog.resolve("ALPHA")
    assert missing.value.available == ["alpha", "beta"]


def test_without_a_default_only_a_single_model_is_implied(models: Path) -> None:
    with pytest.raises(NoModelGiven):
        make_manager(models, []).catalog.resolve(None)
    (models / "beta.gguf").unlink()
    assert make_manager(models, []).catalog.resolve(None).name == "alpha"


def test_a_missing_models_directory_lists_nothing_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager(tmp_path / "absent", [])
    with caplog.at_level(logging.ERROR):
        assert manager.catalog.available() == {}
        assert manager.catalog.available() == {}
    assert caplog.text.count("does not exist") == 1
    with pytest.raises(ModelNotFound) as missing:
        manager.catalog.resolve("alpha")
    assert missing.value.directory_missing and missing.value.directory.endswith("absent")


async def test_loading_happens_off_the_event_loop(models: Path) -> None:
    loop_thread = threading.get_ident()
    load_threads: list[int] = []

    def recording(name: str, path: Path, load: LoadSettings) -> FakeEngine:
        load_threads.append(threading.get_ident())
        return FakeEngine([], name, path, load)

    manager = make_manager(models, [], recording)
    acquiring = asyncio.ensure_future(manager.acquire(manager.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST))
    ticks = 0
    while not acquiring.done():  # the loop keeps running while the model loads
        ticks += 1
        await asyncio.sleep(0.005)
    await acquiring
    assert ticks > 5 and load_threads and load_threads[0] != loop_thread
    manager.shutdown()


@pytest.fixture
def lifecycle_events() -> Iterator[list[tuple[str, str, str]]]:
    """(model, kind, reason) of every lifecycle event announced during the test."""
    seen: list[tuple[str, str, str]] = []

    def receiver(sender: object, *, event: LifecycleEvent, **_: object) -> None:
        seen.append((event.model, event.kind, event.reason))

    model_lifecycle.connect(receiver, dispatch_uid="test-receiver")
    yield seen
    model_lifecycle.disconnect(dispatch_uid="test-receiver")


async def test_a_new_model_waits_while_every_loaded_model_is_busy(models: Path, lifecycle_events) -> None:
    log: list[str] = []
    manager = make_manager(models, log, max_loaded_models=1)
    busy = await manager.submit(manager.catalog.resolve("alpha"), chat("long", max_tokens=30))
    waiting = asyncio.ensure_future(collect(manager, "beta", chat("next")))
    alpha_events = await drain(busy)
    beta_events = await waiting
    assert alpha_events[-1].completion_tokens == 30 and beta_events[-1].finish_reason == "length"
    assert log.index("close alpha") < log.index("load beta")  # its memory came back first
    assert ("alpha", "unload", "lru") in lifecycle_events
    manager.shutdown()


async def test_pinned_models_leave_no_room_rather_than_hang(models: Path) -> None:
    manager = make_manager(models, [], max_loaded_models=1, pinned=True)
    await collect(manager, "alpha", chat("x"))
    with pytest.raises(AllPinned):
        await collect(manager, "beta", chat("x"))
    assert manager.reap() == []
    manager.shutdown()


async def test_a_full_queue_is_refused_with_a_retry_after(models: Path) -> None:
    manager = make_manager(models, [], max_queue=1, parallel=1)
    model = manager.catalog.resolve("alpha")
    running = await manager.submit(model, chat("running", max_tokens=30))
    events = running.events()
    assert isinstance(await anext(events), PromptAccepted)  # admitted: no longer queued
    queued = await manager.submit(model, chat("queued"))
    with pytest.raises(QueueFull) as refused:
        await manager.submit(model, chat("one too many"))
    assert (refused.value.model, refused.value.waiting) == ("alpha", 1) and refused.value.retry_after > 0
    assert [event async for event in events][-1].completion_tokens == 30
    assert (await drain(queued))[-1].finish_reason == "length"
    await collect(manager, "alpha", chat("room again"))
    manager.shutdown()


async def test_a_model_over_the_memory_limit_is_refused_before_loading(models: Path) -> None:
    log: list[str] = []
    manager = make_manager(models, log, max_memory_mb=10)  # a synthetic model is estimated at ~32 MB
    with pytest.raises(ModelTooLarge) as refused:
        await collect(manager, "alpha", chat("x"))
    assert refused.value.limit_mb == 10 and refused.value.needed_mb > 10
    assert log == [] and manager.loaded_models() == []
    manager.shutdown()


async def test_the_memory_limit_unloads_idle_models_to_make_room(models: Path) -> None:
    log: list[str] = []
    manager = make_manager(models, log, max_memory_mb=50, max_loaded_models=2)  # room for one
    await collect(manager, "alpha", chat("x"))
    await collect(manager, "beta", chat("x"))
    assert log.index("close alpha") < log.index("load beta")
    assert manager.loaded_models() == ["beta"]
    manager.shutdown()


async def test_idle_timeout_zero_unloads_after_each_request(models: Path, lifecycle_events) -> None:
    log: list[str] = []
    manager = make_manager(models, log, idle_timeout=0)
    for request in range(1, 3):
        await collect(manager, "alpha", chat(str(request)))
        await until(lambda: lifecycle_events.count(("alpha", "unload", "idle")) == request)
    manager.shutdown()
    assert log.count("load alpha") == 2


async def until(condition: Callable[[], bool], seconds: float = 15) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_the_reaper_thread_unloads_idle_models(models: Path, lifecycle_events) -> None:
    manager = make_manager(models, [], idle_timeout=0.2, check_interval=0.05)
    manager.start_reaper()
    await collect(manager, "alpha", chat("x"))
    assert manager.status()["alpha"]["expires_at"] is not None
    await until(lambda: ("alpha", "unload", "idle") in lifecycle_events)
    assert manager.loaded_models() == []
    manager.shutdown()


async def test_a_busy_model_is_not_reaped_and_unloads_after_its_request(models: Path, fake) -> None:
    manager, log = fake
    manager.catalog.config = manager_config(models, idle_timeout=0.01)
    job = await manager.submit(manager.catalog.resolve("alpha"), chat("long", max_tokens=40))
    await asyncio.sleep(0.1)
    assert manager.reap() == []
    now, pending = manager.unload("alpha", LoadReason.ADMIN_API)
    assert (now, [worker.model.name for worker in pending]) == ([], ["alpha"])
    events = await drain(job)
    assert events[-1].completion_tokens == 40  # the running request finished completely
    await collect(manager, "alpha", chat("again"))
    assert log.count("load alpha") == 2


async def test_unloading_an_unknown_model_is_a_404(fake) -> None:
    manager, _ = fake
    with pytest.raises(ModelNotFound):
        manager.unload("nope", LoadReason.ADMIN_API)
    assert manager.unload("all", LoadReason.ADMIN_API) == ([], [])


async def test_reload_reports_added_removed_and_changed_models(models: Path, fake, lifecycle_events) -> None:
    manager, _ = fake
    await collect(manager, "beta", chat("x"))
    (models / "beta.gguf").unlink()
    write_synthetic(models / "gamma.gguf")
    changes, gone = manager.reload(manager_config(models, models={"alpha": {"n_ctx": 64}}))
    assert (changes.added, changes.removed, changes.changed) == (["gamma"], ["beta"], ["alpha"])
    assert [worker.model.name for worker in gone] == ["beta"]
    gone[0].join(5)
    assert ("beta", "unload", "reload") in lifecycle_events
