"""Warm start: `model_manager.preload` loads a list of models, or the most requested ones of the
last 24 hours ("auto"), in the background once the server answers, within the pool's limits."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from django.db import OperationalError

from inference.config import ConfigError, load_config, set_config
from inference.runtime.lifecycle import LoadReason
from inference.runtime.memory import MIB, memory_needed
from inference.runtime.pool import model_pool, replace_model_pool
from inference.runtime.preload import preload_plan
from inference.selectors import usage as usage_selectors
from inference.services import models as model_services
from tests.conftest import SMOLLM2, link_model, start_server, wait_for, write_config
from tests.database_servers import DatabaseTemplate, free_port
from tests.fake_engine import make_pool
from tests.gguf_files import write_synthetic
from tests.record_factory import make_record

INSTANCE = "127.0.0.1:8080"  # a default config's, and make_record's


@pytest.mark.parametrize("value", ["all", "", ["a", 1], [""], {"a": 1}, True])
def test_a_bad_preload_is_refused_in_one_line(tmp_path: Path, value: object) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_manager": {"preload": value}}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f'{path}: model_manager.preload: must be a list of model names or "auto"')
    assert "\n" not in message


def test_preload_is_a_list_of_names_or_auto(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    assert load_config(path).model_manager.preload == ()  # the default: nothing
    path.write_text(json.dumps({"model_manager": {"preload": ["a", "b", "a"]}}))
    assert load_config(path).model_manager.preload == ("a", "b")
    path.write_text(json.dumps({"model_manager": {"preload": "auto"}}))
    assert load_config(path).model_manager.preload == "auto"


@pytest.mark.django_db
def test_most_requested_models_counts_this_instance_over_the_span() -> None:
    now = datetime.now(UTC)
    for model, count in (("alpha", 2), ("beta", 3), ("gamma", 2)):
        for _ in range(count):
            make_record(now - timedelta(hours=1), model=model)
    for _ in range(5):
        make_record(now - timedelta(hours=25), model="old")  # before the span
        make_record(now - timedelta(hours=1), model="elsewhere", instance="other:8080")
    ranked = usage_selectors.most_requested_models(since=now - timedelta(hours=24), instance=INSTANCE)
    assert ranked == ["beta", "alpha", "gamma"]  # ties by name


def three_models(directory: Path) -> Path:
    directory.mkdir()
    for name in ("alpha", "beta", "gamma"):
        write_synthetic(directory / f"{name}.gguf", context_length=1024)
    return directory


def test_the_plan_stops_at_max_loaded_models_and_warns_of_unknown_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(three_models(tmp_path / "models"), [], max_loaded_models=2)
    with caplog.at_level(logging.INFO):
        plan = preload_plan(["gamma", "nope", "alpha.gguf", "gamma", "beta"], pool, named=True)
    assert [chosen.model.name for chosen in plan] == ["gamma", "alpha"]
    assert "preload: nope is not a model in" in caplog.text
    assert "preload: beta skipped: max_loaded_models (2) reached" in caplog.text
    caplog.clear()
    assert [chosen.model.name for chosen in preload_plan(["nope", "beta"], pool, named=False)] == ["beta"]
    assert "nope" not in caplog.text  # from the records: a model since removed, skipped quietly


def test_the_plan_keeps_within_the_memory_budget(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = three_models(tmp_path / "models")
    probe = make_pool(models, [])
    one = memory_needed(probe.catalog.resolve("alpha"), probe.config.defaults, 2**62)
    budget_mb = math.ceil(one * 1.5 / MIB)  # room for one model, not two
    pool = make_pool(models, [], max_loaded_models=3, max_memory_mb=budget_mb)
    with caplog.at_level(logging.INFO):
        plan = preload_plan(["beta", "alpha", "gamma"], pool, named=True)
    assert [(chosen.model.name, chosen.memory_bytes) for chosen in plan] == [("beta", one)]
    assert f"exceed max_memory_mb ({budget_mb} MB)" in caplog.text
    tiny = make_pool(models, [], max_memory_mb=1)
    assert preload_plan(["alpha"], tiny, named=True) == []
    assert "preload: alpha skipped: it needs about" in caplog.text


@pytest.fixture
def fake_pool(tmp_path: Path, transactional_db: None) -> Iterator[list[str]]:
    """A fake pool over alpha, beta and gamma with preload "auto" and room for two; its log."""
    set_config(load_config(tmp_path / "absent.json"))
    log: list[str] = []
    replace_model_pool(make_pool(three_models(tmp_path / "models"), log, max_loaded_models=2, preload="auto"))
    yield log
    replace_model_pool(None)
    set_config(None)


def test_auto_loads_the_most_requested_models_that_fit(fake_pool: list[str], lifecycle_events: list) -> None:
    now = datetime.now(UTC)
    for model, count in (("gamma", 1), ("alpha", 3), ("beta", 2), ("removed", 9)):
        for _ in range(count):
            make_record(now - timedelta(minutes=5), model=model)
    assert asyncio.run(model_services.models_preload()) == ["alpha", "beta"]
    assert fake_pool == ["load alpha", "load beta"]  # one at a time, the most requested first
    assert lifecycle_events == [("alpha", "load", "preload"), ("beta", "load", "preload")]


def test_a_preload_never_unloads_a_model_to_make_room(fake_pool: list[str], lifecycle_events: list) -> None:
    pool = model_pool()
    for name in ("gamma", "beta"):
        asyncio.run(pool.acquire(pool.catalog.resolve(name), LoadReason.FIRST_REQUEST))
    make_record(datetime.now(UTC), model="alpha")
    assert asyncio.run(model_services.models_preload()) == []
    assert sorted(pool.loaded_models()) == ["beta", "gamma"]


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_listed_models_load_in_the_background_after_start(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    """A real server: the models of the list load after it answers; a model that fails to load
    and a name that is no model are logged, and it serves on."""
    link_model(smollm2_file, tmp_path / "models", SMOLLM2)
    write_synthetic(tmp_path / "models" / "broken.gguf", context_length=1024)  # a header, no weights
    config = write_config(tmp_path, n_ctx=2048, max_loaded_models=3, preload=["missing", "broken", SMOLLM2])
    server = start_server(config, tmp_path / "server.log", migrated_database, "--port", str(free_port()))
    try:
        wait_for(lambda: SMOLLM2 in server.loaded(), seconds=60)
        wait_for(lambda: f"preload: {SMOLLM2} is loaded" in server.log())
        log = server.log()
        assert "preload (list): broken, " + SMOLLM2 in log
        assert "preload: missing is not a model in" in log
        assert "preload: broken failed to load" in log
        assert server.rows("SELECT model, kind, reason FROM inference_loadevent WHERE reason = 'preload'") == [
            (SMOLLM2, "load", "preload")
        ]
        assert server.chat(SMOLLM2).status_code == 200
        assert httpx.get(f"{server.url}/health", timeout=10).json()["models"][SMOLLM2]["state"] == "loaded"
    finally:
        server.stop()


def test_auto_without_the_records_preloads_nothing(
    fake_pool: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable(**_: object) -> list[str]:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(model_services, "most_requested_models", unreachable)
    assert asyncio.run(model_services.models_preload()) == []
    assert "preload: the most requested models are unknown, nothing preloaded" in caplog.text
    assert fake_pool == []  # nothing loaded, and nothing raised: the server serves on
