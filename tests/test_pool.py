"""The model pool's timing logic, driven fast by a fake engine (real-model tests are elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference import cpus
from inference.runtime.errors import AllPinned, LoadFailed, ModelNotFound, ModelTooLarge, NoModelGiven, QueueFull
from inference.runtime.jobs import Finished, PromptAccepted
from inference.runtime.lifecycle import LoadReason
from inference.runtime.llama import LlamaLoadError
from inference.runtime.pool import ModelPool
from inference.runtime.settings import LoadSettings
from tests.fake_engine import FakeEngine, chat, collect, drain, make_pool, pool_config, until
from tests.gguf_files import write_synthetic

# Worker threads record their lifecycle in the database.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fake(synthetic_models: Path) -> Iterator[tuple[ModelPool, list[str]]]:
    """A pool over two fake models, and the log of what its fake engines did."""
    log: list[str] = []
    pool = make_pool(synthetic_models, log)
    yield pool, log
    pool.shutdown()


async def test_concurrent_first_requests_share_one_load(fake: tuple[ModelPool, list[str]]) -> None:
    pool, log = fake
    results = await asyncio.gather(*(collect(pool, "alpha", chat(str(i))) for i in range(4)))
    assert log.count("load alpha") == 1
    assert all(isinstance(events[-1], Finished) for events in results)
    assert pool.loaded_models() == ["alpha"]
    pool.shutdown()
    assert log[-1] == "close alpha"


async def test_a_model_s_thread_stands_behind_the_event_loop(synthetic_models: Path) -> None:
    engines: list[FakeEngine] = []
    pool = make_pool(synthetic_models, [], lambda *args: engines.append(FakeEngine([], *args)) or engines[-1])
    await collect(pool, "alpha", chat("hi"))
    pool.shutdown()
    loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert engines[0].niceness == min(loop_niceness + cpus.MODEL_THREAD_NICENESS, 19)


async def test_jobs_on_one_model_run_in_arrival_order(synthetic_models: Path) -> None:
    log: list[str] = []
    pool = make_pool(synthetic_models, log, parallel=1)
    worker = await pool.acquire(pool.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    jobs = [worker.submit(chat(f"job{i}", max_tokens=5)) for i in range(3)]
    assert worker.status().queued + worker.status().in_flight == 3
    outputs = await asyncio.gather(*(drain(job) for job in jobs))
    assert [entry for entry in log if entry.startswith("run")] == ["run job0", "run job1", "run job2"]
    assert all(events[-1].completion_tokens == 5 for events in outputs)
    pool.shutdown()


async def test_a_cancelled_job_stops_and_frees_the_worker(fake: tuple[ModelPool, list[str]]) -> None:
    pool, log = fake
    worker = await pool.acquire(pool.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    long_job = worker.submit(chat("long", max_tokens=10_000))
    events = long_job.events()
    await anext(events)  # prompt accepted: the job is running
    await anext(events)
    await events.aclose()
    follow_up = await collect(pool, "alpha", chat("next"))
    assert follow_up[-1].finish_reason == "length"
    status = worker.status()
    assert (status.in_flight, status.queued) == (0, 0)


async def test_a_job_cancelled_while_queued_never_runs(synthetic_models: Path) -> None:
    log: list[str] = []
    pool = make_pool(synthetic_models, log, parallel=1)
    worker = await pool.acquire(pool.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    first = worker.submit(chat("first", max_tokens=20))
    queued = worker.submit(chat("queued"))
    queued.cancel()
    await drain(first)
    await collect(pool, "alpha", chat("last"))
    assert "run queued" not in log
    pool.shutdown()


async def test_different_models_do_not_wait_for_each_other(fake: tuple[ModelPool, list[str]]) -> None:
    pool, log = fake
    alpha = await pool.acquire(pool.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST)
    long_job = alpha.submit(chat("long", max_tokens=300))
    long_events = long_job.events()
    await anext(long_events)
    beta_events = await collect(pool, "beta", chat("short"))
    assert beta_events[-1].finish_reason == "length"
    assert alpha.status().in_flight == 1  # alpha is still generating
    await long_events.aclose()


async def test_a_failed_load_is_reported_and_retried_on_the_next_request(synthetic_models: Path) -> None:
    log: list[str] = []
    attempts = []

    def flaky(name: str, path: Path, settings: LoadSettings) -> FakeEngine:
        attempts.append(name)
        if len(attempts) == 1:
            raise LlamaLoadError("tensor data is not within the file bounds")
        return FakeEngine(log, name, path, settings)

    pool = make_pool(synthetic_models, log, flaky)
    with pytest.raises(LoadFailed) as failure:
        await collect(pool, "alpha", chat("one"))
    assert failure.value.model == "alpha" and "not within the file bounds" in failure.value.cause
    assert pool.loaded_models() == []
    events = await collect(pool, "alpha", chat("two"))
    assert events[-1].finish_reason == "length" and len(attempts) == 2
    pool.shutdown()


async def test_unreadable_header_fails_the_load_without_reaching_the_engine(synthetic_models: Path) -> None:
    (synthetic_models / "broken.gguf").write_bytes(b"not a model at all")
    log: list[str] = []
    pool = make_pool(synthetic_models, log)
    with pytest.raises(LoadFailed) as failure:
        await collect(pool, "broken", chat("x"))
    assert (failure.value.file, failure.value.cause) == ("broken.gguf", "not a GGUF file (wrong magic bytes)")
    assert log == []


async def test_context_is_capped_to_what_the_model_was_trained_with(synthetic_models: Path) -> None:
    settings: list[LoadSettings] = []

    def recording(name: str, path: Path, load: LoadSettings) -> FakeEngine:
        settings.append(load)
        return FakeEngine([], name, path, load)

    for n_ctx in (16384, 0, 256):
        pool = make_pool(synthetic_models, [], recording, n_ctx=n_ctx, n_threads=3)
        await collect(pool, "alpha", chat("x"))
        pool.shutdown()
    assert [(s.n_ctx, s.n_threads) for s in settings] == [(1024, 3), (1024, 3), (256, 3)]


def test_model_names_resolve_exactly(synthetic_models: Path) -> None:
    pool = make_pool(synthetic_models, [], default_model="beta")
    assert pool.catalog.resolve("alpha").name == "alpha"
    assert pool.catalog.resolve("alpha.gguf").name == "alpha"
    assert pool.catalog.resolve(None).name == "beta"
    with pytest.raises(ModelNotFound) as missing:
        pool.catalog.resolve("ALPHA")
    assert missing.value.available == ["alpha", "beta"]


def test_without_a_default_only_a_single_model_is_implied(synthetic_models: Path) -> None:
    with pytest.raises(NoModelGiven):
        make_pool(synthetic_models, []).catalog.resolve(None)
    (synthetic_models / "beta.gguf").unlink()
    assert make_pool(synthetic_models, []).catalog.resolve(None).name == "alpha"


def test_a_missing_models_directory_lists_nothing_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(tmp_path / "absent", [])
    with caplog.at_level(logging.ERROR):
        assert pool.catalog.available() == {}
        assert pool.catalog.available() == {}
    assert caplog.text.count("does not exist") == 1
    with pytest.raises(ModelNotFound) as missing:
        pool.catalog.resolve("alpha")
    assert missing.value.directory_missing and missing.value.directory.endswith("absent")


async def test_loading_happens_off_the_event_loop(synthetic_models: Path) -> None:
    loop_thread = threading.get_ident()
    load_threads: list[int] = []

    def recording(name: str, path: Path, load: LoadSettings) -> FakeEngine:
        load_threads.append(threading.get_ident())
        return FakeEngine([], name, path, load)

    pool = make_pool(synthetic_models, [], recording)
    acquiring = asyncio.ensure_future(pool.acquire(pool.catalog.resolve("alpha"), LoadReason.FIRST_REQUEST))
    ticks = 0
    while not acquiring.done():  # the loop keeps running while the model loads
        ticks += 1
        await asyncio.sleep(0.005)
    await acquiring
    assert ticks > 5 and load_threads and load_threads[0] != loop_thread
    pool.shutdown()


@pytest.mark.slow
async def test_a_new_model_waits_while_every_loaded_model_is_busy(synthetic_models: Path, lifecycle_events) -> None:
    log: list[str] = []
    pool = make_pool(synthetic_models, log, max_loaded_models=1)
    busy = await pool.submit(pool.catalog.resolve("alpha"), chat("long", max_tokens=30))
    waiting = asyncio.ensure_future(collect(pool, "beta", chat("next")))
    alpha_events = await drain(busy)
    beta_events = await waiting
    assert alpha_events[-1].completion_tokens == 30 and beta_events[-1].finish_reason == "length"
    assert log.index("close alpha") < log.index("load beta")  # its memory came back first
    assert ("alpha", "unload", "lru") in lifecycle_events
    pool.shutdown()


async def test_pinned_models_leave_no_room_rather_than_hang(synthetic_models: Path) -> None:
    pool = make_pool(synthetic_models, [], max_loaded_models=1, pinned=True)
    await collect(pool, "alpha", chat("x"))
    with pytest.raises(AllPinned):
        await collect(pool, "beta", chat("x"))
    assert pool.reaper.reap() == []
    pool.shutdown()


async def test_a_full_queue_is_refused_with_a_retry_after(synthetic_models: Path) -> None:
    pool = make_pool(synthetic_models, [], max_queue=1, parallel=1)
    model = pool.catalog.resolve("alpha")
    running = await pool.submit(model, chat("running", max_tokens=30))
    events = running.events()
    assert isinstance(await anext(events), PromptAccepted)  # admitted: no longer queued
    queued = await pool.submit(model, chat("queued"))
    with pytest.raises(QueueFull) as refused:
        await pool.submit(model, chat("one too many"))
    assert (refused.value.model, refused.value.waiting) == ("alpha", 1) and refused.value.retry_after > 0
    assert [event async for event in events][-1].completion_tokens == 30
    assert (await drain(queued))[-1].finish_reason == "length"
    await collect(pool, "alpha", chat("room again"))
    pool.shutdown()


async def test_a_model_over_the_memory_limit_is_refused_before_loading(synthetic_models: Path) -> None:
    log: list[str] = []
    pool = make_pool(synthetic_models, log, max_memory_mb=10, prompt_cache_mb=0)  # a synthetic model: ~32 MB
    with pytest.raises(ModelTooLarge) as refused:
        await collect(pool, "alpha", chat("x"))
    assert refused.value.limit_mb == 10 and refused.value.needed_mb > 10
    assert log == [] and pool.loaded_models() == []
    pool.shutdown()


async def test_the_prompt_cache_budget_counts_toward_the_memory_limit(synthetic_models: Path) -> None:
    log: list[str] = []
    pool = make_pool(synthetic_models, log, max_memory_mb=50, prompt_cache_mb=30)  # ~32 MB + 30 MB
    with pytest.raises(ModelTooLarge) as refused:
        await collect(pool, "alpha", chat("x"))
    assert refused.value.needed_mb > 50 and "prompt cache up to 30 MB" in refused.value.estimate
    assert log == []
    pool.catalog.config = pool_config(synthetic_models, max_memory_mb=50, prompt_cache_mb=10)
    await collect(pool, "alpha", chat("x"))
    assert pool.loaded_models() == ["alpha"]
    pool.shutdown()


async def test_the_memory_limit_unloads_idle_models_to_make_room(synthetic_models: Path) -> None:
    log: list[str] = []
    pool = make_pool(synthetic_models, log, max_memory_mb=50, max_loaded_models=2, prompt_cache_mb=0)  # room for one
    await collect(pool, "alpha", chat("x"))
    await collect(pool, "beta", chat("x"))
    assert log.index("close alpha") < log.index("load beta")
    assert pool.loaded_models() == ["beta"]
    pool.shutdown()


async def test_idle_timeout_zero_unloads_after_each_request(synthetic_models: Path, lifecycle_events) -> None:
    log: list[str] = []
    pool = make_pool(synthetic_models, log, idle_timeout=0)
    for request in range(1, 3):
        await collect(pool, "alpha", chat(str(request)))
        await until(lambda request=request: lifecycle_events.count(("alpha", "unload", "idle")) == request)
    pool.shutdown()
    assert log.count("load alpha") == 2


async def test_the_reaper_thread_unloads_idle_models(synthetic_models: Path, lifecycle_events) -> None:
    pool = make_pool(synthetic_models, [], idle_timeout=0.2, check_interval=0.05)
    pool.reaper.start()
    await collect(pool, "alpha", chat("x"))
    assert pool.status()["alpha"].expires_in is not None
    await until(lambda: ("alpha", "unload", "idle") in lifecycle_events)
    assert pool.loaded_models() == []
    pool.shutdown()


@pytest.mark.slow
async def test_a_busy_model_is_not_reaped_and_unloads_after_its_request(synthetic_models: Path, fake) -> None:
    pool, log = fake
    pool.catalog.config = pool_config(synthetic_models, idle_timeout=0.01)
    job = await pool.submit(pool.catalog.resolve("alpha"), chat("long", max_tokens=40))
    await asyncio.sleep(0.1)
    assert pool.reaper.reap() == []
    now, pending = pool.unload("alpha", LoadReason.ADMIN_API)
    assert (now, [worker.model.name for worker in pending]) == ([], ["alpha"])
    events = await drain(job)
    assert events[-1].completion_tokens == 40  # the running request finished completely
    await collect(pool, "alpha", chat("again"))
    assert log.count("load alpha") == 2


async def test_unloading_an_unknown_model_is_a_404(fake) -> None:
    pool, _ = fake
    with pytest.raises(ModelNotFound):
        pool.unload("nope", LoadReason.ADMIN_API)
    assert pool.unload("all", LoadReason.ADMIN_API) == ([], [])


async def test_reload_reports_added_removed_and_changed_models(synthetic_models: Path, fake, lifecycle_events) -> None:
    pool, _ = fake
    await collect(pool, "beta", chat("x"))
    (synthetic_models / "beta.gguf").unlink()
    write_synthetic(synthetic_models / "gamma.gguf")
    changes, gone = pool.reload(pool_config(synthetic_models, models={"alpha": {"n_ctx": 64}}))
    assert (changes.added, changes.removed, changes.changed) == (["gamma"], ["beta"], ["alpha"])
    assert [worker.model.name for worker in gone] == ["beta"]
    gone[0].join(5)
    assert ("beta", "unload", "reload") in lifecycle_events
