"""A model whose engine raises — at load, prepare, start, step or close — fails what it must with
the cause, is forgotten, and loads afresh on the next request; other models never notice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from django.test import AsyncClient

from inference.config import get_config
from inference.models import LoadEvent
from inference.runtime.errors import GrammarNotCompiled, LoadFailed, PrepareFailed, WorkerFailed
from inference.runtime.jobs import ChatJob, Finished, Prepared, PromptAccepted
from inference.runtime.lifecycle import LoadReason
from inference.runtime.pool import ModelPool, replace_model_pool
from inference.runtime.settings import LoadSettings
from tests.conftest import SMOLLM2
from tests.fake_engine import FakeEngine, chat, collect, drain, job_text, make_pool, until

pytestmark = pytest.mark.django_db(transaction=True)

DECODE_ERROR = "llama_decode returned -3"


class FaultyEngine(FakeEngine):
    """A fake engine that breaks where a job's text says: "fail at prepare", "fail at start",
    "fail at step"; and at load or close when its model is in `broken`."""

    def __init__(
        self, broken: dict[str, set[str]], log: list[str], name: str, path: Path, settings: LoadSettings
    ) -> None:
        self.broken = broken.setdefault(name, set())
        if "load" in self.broken:
            self.broken.discard("load")  # once: the next load works
            raise RuntimeError("out of memory while loading")
        super().__init__(log, name, path, settings)

    def prepare(self, job: ChatJob) -> Prepared:
        if job_text(job).endswith("fail at prepare"):
            raise ValueError("the template engine tripped")
        return super().prepare(job)

    def start(self, key, prepared: Prepared, cancelled: Callable[[], bool]) -> PromptAccepted:
        if job_text(prepared.job).endswith("fail at start"):
            raise GrammarNotCompiled()
        return super().start(key, prepared, cancelled)

    def step(self) -> list:
        if any("fail at step" in job_text(job) for job, _, _ in self.sequences.values()):
            raise RuntimeError(DECODE_ERROR)
        return super().step()

    def close(self) -> None:
        super().close()
        if "close" in self.broken:
            raise RuntimeError("freeing the context failed")


def faulty_pool(models: Path, log: list[str], broken: dict[str, set[str]] | None = None, **settings) -> ModelPool:
    broken = {} if broken is None else broken
    return make_pool(models, log, lambda *args: FaultyEngine(broken, log, *args), **settings)


async def outcome(pool: ModelPool, model: str, job: ChatJob) -> Finished | Exception:
    """How a job ended: its last Finished, or the exception it raised (never a hang)."""
    try:
        return (await asyncio.wait_for(collect(pool, model, job), timeout=15))[-1]
    except (WorkerFailed, LoadFailed, PrepareFailed, GrammarNotCompiled) as failure:
        return failure


async def test_a_failing_step_fails_running_and_queued_jobs_and_the_next_request_loads_afresh(
    synthetic_models: Path, lifecycle_events
) -> None:
    log: list[str] = []
    pool = faulty_pool(synthetic_models, log, parallel=1)
    worker = await pool.acquire(pool.catalog.resolve("alpha"), reason=LoadReason.FIRST_REQUEST)
    running = worker.submit(chat("fail at step", max_tokens=50))
    queued = worker.submit(chat("queued behind it"))
    for job in (running, queued):
        with pytest.raises(WorkerFailed) as failure:
            await asyncio.wait_for(drain(job), timeout=15)
        assert (failure.value.model, failure.value.cause) == ("alpha", DECODE_ERROR)
    await until(lambda: pool.worker("alpha") is None)  # forgotten, not left to hang the next request
    assert ("alpha", "unload", "error") in lifecycle_events
    assert await LoadEvent.objects.filter(model="alpha", reason="error", error=DECODE_ERROR).aexists()
    assert (await outcome(pool, "alpha", chat("afterwards"))).finish_reason == "length"
    assert log.count("load alpha") == 2 and log.count("close alpha") == 1
    pool.shutdown()


@pytest.mark.slow
async def test_other_models_never_notice(synthetic_models: Path) -> None:
    pool = faulty_pool(synthetic_models, [])
    beta = asyncio.ensure_future(outcome(pool, "beta", chat("long", max_tokens=60)))
    assert isinstance(await outcome(pool, "alpha", chat("fail at step")), WorkerFailed)
    finished = await beta
    assert finished.completion_tokens == 60
    pool.shutdown()


async def test_a_failed_model_frees_its_place_for_another(synthetic_models: Path) -> None:
    """With max_loaded_models 1, a dead worker that stayed registered blocked every model."""
    pool = faulty_pool(synthetic_models, [], max_loaded_models=1)
    assert isinstance(await outcome(pool, "alpha", chat("fail at step")), WorkerFailed)
    assert (await outcome(pool, "beta", chat("next"))).finish_reason == "length"
    assert pool.loaded_models() == ["beta"]
    pool.shutdown()


async def test_a_failing_close_still_forgets_the_worker(synthetic_models: Path) -> None:
    log: list[str] = []
    pool = faulty_pool(synthetic_models, log, broken={"alpha": {"close"}})
    assert isinstance(await outcome(pool, "alpha", chat("fail at step")), WorkerFailed)
    await until(lambda: pool.worker("alpha") is None)
    assert (await outcome(pool, "alpha", chat("again"))).finish_reason == "length"
    pool.shutdown()


async def test_a_failing_load_fails_its_request_and_the_next_one_loads(
    synthetic_models: Path, lifecycle_events
) -> None:
    pool = faulty_pool(synthetic_models, [], broken={"alpha": {"load"}})
    failure = await outcome(pool, "alpha", chat("first"))
    assert isinstance(failure, LoadFailed) and failure.cause == "out of memory while loading"
    assert ("alpha", "load_failed", "error") in lifecycle_events
    assert (await outcome(pool, "alpha", chat("second"))).finish_reason == "length"
    pool.shutdown()


@pytest.mark.parametrize(
    ("text", "failure"), [("fail at prepare", PrepareFailed), ("fail at start", GrammarNotCompiled)]
)
async def test_a_job_that_cannot_run_fails_alone(synthetic_models: Path, text: str, failure: type) -> None:
    log: list[str] = []
    pool = faulty_pool(synthetic_models, log, parallel=1)
    neighbour = asyncio.ensure_future(outcome(pool, "alpha", chat("neighbour", max_tokens=20)))
    assert isinstance(await outcome(pool, "alpha", chat(text)), failure)
    assert (await neighbour).completion_tokens == 20
    assert (await outcome(pool, "alpha", chat("after"))).finish_reason == "length"
    assert log.count("load alpha") == 1  # the model kept serving
    pool.shutdown()


async def test_jobs_arriving_while_a_worker_breaks_all_end(synthetic_models: Path) -> None:
    """Every job ends — done, or failed with the cause — however it races the failure."""
    pool = faulty_pool(synthetic_models, [], parallel=2)
    texts = ["fail at step" if number % 5 == 2 else f"job {number}" for number in range(30)]
    endings = await asyncio.gather(*(outcome(pool, "alpha", chat(text, max_tokens=4)) for text in texts))
    assert all(isinstance(ending, (Finished, WorkerFailed)) for ending in endings)
    assert any(isinstance(ending, WorkerFailed) for ending in endings)
    pool.shutdown()


@pytest.fixture
def faulty_server(use_config) -> ModelPool:
    """The API in-process over a pool of faulty fake engines (SmolLM2's file, never loaded)."""
    pool = faulty_pool(get_config().model_manager.models_directory, [])
    replace_model_pool(pool)
    return pool


async def test_over_http_the_failure_is_a_503_naming_the_model_and_the_cause(faulty_server) -> None:
    client = AsyncClient()
    body = {"model": SMOLLM2, "messages": [{"role": "user", "content": "fail at step"}], "max_tokens": 5}
    failed = await client.post("/v1/chat/completions", body, content_type="application/json")
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "model_failed")
    assert SMOLLM2 in error["message"] and DECODE_ERROR in error["message"]
    body["messages"][0]["content"] = "and now?"
    assert (await client.post("/v1/chat/completions", body, content_type="application/json")).status_code == 200
