"""The live models page: the table's rows (states, load progress, slots and queue, today's usage,
cache hits), its pushes over the WebSocket, its buttons, `GET /admin/models` and `manage.py
models`; in a real Chromium, Load and Unload turn the row live."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client

from dashboard.consumers import ModelTableConsumer
from dashboard.model_feed import publisher
from inference.config import get_config
from inference.models import DiscoveredModel
from inference.runtime.lifecycle import LoadReason
from inference.runtime.llama import LlamaLoadError
from inference.runtime.pool import ModelPool, model_pool, replace_model_pool
from inference.selectors.model_table import ModelRow, model_table, usage_today_query
from inference.services import models as model_services
from tests.browser import console_server, log_in, needs_chromium, screenshot
from tests.conftest import (
    PROJECT_DIR,
    SMOLLM2,
    DaphneServer,
    ServerFactory,
    free_port,
    server_env,
    write_config,
)
from tests.database_servers import DatabaseTemplate
from tests.fake_engine import FakeEngine, chat, drain, pool_config, until
from tests.gguf_files import write_synthetic
from tests.record_factory import make_record

ADMIN_TOKEN = "models-page-admin-token"


def rows() -> dict[str, ModelRow]:
    return {row.name: row for row in model_table().rows}


async def rows_now() -> dict[str, ModelRow]:
    return await sync_to_async(rows)()


# --- the table's rows, with fake engines where timing matters ------------------------------------


@pytest.fixture
def gated_pool(use_config: Callable[..., Path], tmp_path: Path) -> Iterator[tuple[ModelPool, threading.Event]]:
    """The process's pool over alpha and beta (readable, unloadable files): a load reports 50 %,
    then waits for the gate; beta's load then fails."""
    models = tmp_path / "fake-models"
    models.mkdir()
    for name in ("alpha", "beta"):
        write_synthetic(models / f"{name}.gguf", context_length=1024)
    gate = threading.Event()

    def factory(name: str, path: Path, settings: Any, progress: Callable[[float], None]) -> FakeEngine:
        progress(0.5)
        assert gate.wait(15)
        if name == "beta":
            raise LlamaLoadError("tensor data is not within the file bounds")
        return FakeEngine([], name, path, settings)

    pool = ModelPool(pool_config(models, parallel=1, idle_timeout=300), factory)
    replace_model_pool(pool)
    yield pool, gate
    gate.set()


@pytest.mark.slow
async def test_rows_follow_a_model_through_loading_serving_and_failing(gated_pool) -> None:
    pool, gate = gated_pool
    states_told: list[str] = []
    pool.watchers.add(lambda: states_told.append(str(pool.worker("alpha").state) if pool.worker("alpha") else "-"))
    assert {name: row.state for name, row in (await rows_now()).items()} == {"alpha": "unloaded", "beta": "unloaded"}

    loading = asyncio.ensure_future(pool.acquire(pool.catalog.resolve("alpha"), LoadReason.ADMIN_UI))
    await until(lambda: pool.worker("alpha") is not None and pool.worker("alpha").load_percent == 50)
    alpha = (await rows_now())["alpha"]
    assert (alpha.state, alpha.load_percent, alpha.expires_at) == ("loading", 50, None)
    gate.set()
    await loading
    first = await pool.submit(pool.catalog.resolve("alpha"), chat("long", max_tokens=300))
    second = await pool.submit(pool.catalog.resolve("alpha"), chat("waits"))
    await until(lambda: pool.worker("alpha").counts.in_flight == 1)
    alpha = (await rows_now())["alpha"]
    assert (alpha.state, alpha.load_percent, alpha.slots_busy, alpha.parallel, alpha.queued) == (
        "loaded",
        None,
        1,
        1,
        1,
    )
    assert alpha.last_load_reason == "admin_ui" and alpha.memory_mb and alpha.expires_at is None  # busy
    await drain(first)
    await drain(second)
    alpha = (await rows_now())["alpha"]
    expires = datetime.fromisoformat(alpha.expires_at)
    assert timedelta(seconds=200) < expires - datetime.now(UTC) <= timedelta(seconds=300)  # idle_timeout 300
    assert {"loading", "loaded"} <= set(states_told)

    pool.pin("alpha", True)  # in force on the loaded model at once
    alpha = (await rows_now())["alpha"]
    assert alpha.pinned and alpha.expires_at is None

    with pytest.raises(Exception, match="file bounds"):
        await pool.acquire(pool.catalog.resolve("beta"), LoadReason.ADMIN_UI)
    beta = (await rows_now())["beta"]
    assert beta.state == "failed" and "file bounds" in beta.error

    pool.unload("alpha", LoadReason.ADMIN_UI)
    await until(lambda: pool.worker("alpha") is None and not pool.workers())
    assert (await rows_now())["alpha"].state == "unloaded"


def test_today_counts_and_cache_hit_rate_come_from_this_servers_records_of_today(use_config) -> None:
    here, now = get_config().server.instance, datetime.now(UTC)
    midnight = datetime.combine(now.date(), datetime.min.time(), UTC)
    for cached in (0, 60, 90):
        make_record(
            max(midnight, now - timedelta(minutes=5)),
            model=SMOLLM2,
            prompt_tokens=100,
            cached_tokens=cached,
            completion_tokens=7,
            instance=here,
        )
    make_record(midnight - timedelta(minutes=1), model=SMOLLM2, prompt_tokens=5000, instance=here)  # yesterday
    make_record(now, model=SMOLLM2, prompt_tokens=5000, instance="another-server:8080")
    row = rows()[SMOLLM2]
    assert (row.requests_today, row.prompt_tokens_today, row.completion_tokens_today) == (3, 300, 21)
    assert (row.cached_tokens_today, row.cache_hit_rate) == (150, 0.5)
    assert row.state == "unloaded" and row.last_load_reason == ""


def test_todays_usage_is_read_through_the_created_at_index(use_config) -> None:
    plan = usage_today_query(get_config().server.instance, [SMOLLM2, "other"]).explain()
    assert "SEARCH inference_requestrecord USING INDEX" in plan and "created_at>" in plan, plan


# --- the page, its buttons and its pushes (SmolLM2 in this process) ------------------------------


def test_page_needs_staff_and_lists_every_model(use_config, admin_client: Client, client: Client) -> None:
    assert client.get("/dashboard/models/").status_code == 302
    page = admin_client.get("/dashboard/models/")
    assert page.status_code == 200
    table = page.context["table"]
    assert [(row["name"], row["state"]) for row in table["models"]] == [(SMOLLM2, "unloaded")]
    html = page.content.decode()
    assert 'id="model-table"' in html and 'data-nav="models" aria-current="page"' in html


def test_buttons_load_pin_and_unload_with_csrf(use_config, admin_user: User) -> None:
    browserless = Client(enforce_csrf_checks=True)
    browserless.force_login(admin_user)
    refused = browserless.post("/dashboard/models/load/", {"model": SMOLLM2})
    assert refused.status_code == 403 and model_pool().worker(SMOLLM2) is None
    token = browserless.get("/dashboard/models/").context["csrf_token"]

    def act(action: str, model: str = SMOLLM2) -> Any:
        return browserless.post(f"/dashboard/models/{action}/", {"model": model}, HTTP_X_CSRFTOKEN=str(token))

    assert act("load").json() == {"message": f"{SMOLLM2} is loaded."}
    assert rows()[SMOLLM2].state == "loaded" and rows()[SMOLLM2].last_load_reason == "admin_ui"
    assert act("pin").status_code == 200
    assert model_pool().worker(SMOLLM2).settings.pinned and rows()[SMOLLM2].pinned
    assert DiscoveredModel.objects.get(name=SMOLLM2).pinned is True  # the admin's setting
    assert act("unpin").status_code == 200 and DiscoveredModel.objects.get(name=SMOLLM2).pinned is False
    assert act("unload").json() == {"message": f"{SMOLLM2} is unloaded."}
    assert rows()[SMOLLM2].state == "unloaded"
    missing = act("load", "no-such-model")
    assert missing.status_code == 404 and "no-such-model" in missing.json()["error"]
    assert act("explode").status_code == 400


def test_the_admins_pin_takes_effect_on_a_loaded_model(use_config, admin_client: Client) -> None:
    model_services.discovered_models_sync(models=model_pool().catalog.available())
    row = DiscoveredModel.objects.get(name=SMOLLM2)
    asyncio.run(model_services.model_load(model=SMOLLM2, reason=LoadReason.ADMIN_UI))
    change = f"/admin/inference/discoveredmodel/{row.pk}/change/"
    saved = admin_client.post(change, {"n_ctx": "", "n_gpu_layers": "", "idle_timeout": "", "pinned": "true"})
    assert saved.status_code == 302
    assert model_pool().worker(SMOLLM2).settings.pinned and rows()[SMOLLM2].expires_at is None
    admin_client.post(change, {"n_ctx": "", "n_gpu_layers": "", "idle_timeout": "", "pinned": "unknown"})
    assert not model_pool().worker(SMOLLM2).settings.pinned  # config.json's again: not pinned


@pytest.mark.slow
async def test_websocket_pushes_the_table_when_a_model_loads(use_config) -> None:
    staff = await sync_to_async(User.objects.create_user)("staff", password="pw", is_staff=True)
    page = WebsocketCommunicator(ModelTableConsumer.as_asgi(), "/ws/dashboard/models/")
    page.scope["user"] = staff
    connected, _ = await page.connect()
    assert connected
    first = await page.receive_json_from(timeout=10)
    assert first["models"][0]["state"] == "unloaded"
    await model_services.model_load(model=SMOLLM2, reason=LoadReason.ADMIN_UI)
    states = []
    while "loaded" not in states:
        table = await page.receive_json_from(timeout=10)
        states.append(table["models"][0]["state"])
    assert table["models"][0]["last_load_reason"] == "admin_ui"
    while not await page.receive_nothing(timeout=1):  # the load's last pushes
        await page.receive_json_from()
    for _ in range(50):  # a burst of changes (requests starting, ending) is one push
        publisher.changed()
    assert (await page.receive_json_from(timeout=10))["models"][0]["state"] == "loaded"
    assert await page.receive_nothing(timeout=1)
    await page.disconnect()

    stranger = WebsocketCommunicator(ModelTableConsumer.as_asgi(), "/ws/dashboard/models/")
    stranger.scope["user"] = AnonymousUser()
    connected, code = await stranger.connect()
    assert not connected and code == 4403


def test_llama_reports_load_progress_to_the_worker(use_config) -> None:
    percents: list[int] = []
    pool = model_pool()
    pool.watchers.add(lambda: percents.append(getattr(pool.worker(SMOLLM2), "load_percent", -1)))
    asyncio.run(model_services.model_load(model=SMOLLM2, reason=LoadReason.ADMIN_UI))
    assert any(0 < percent < 100 for percent in percents) and 100 in percents, percents


# --- GET /admin/models and manage.py models, against a real server -------------------------------


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    settings = {"idle_timeout": 600, "max_memory_mb": 4096}
    with console_server(server_factory, "models-page", prepare=with_token, **settings) as server:
        yield server


def with_token(root: Path) -> None:
    """ADMIN_TOKEN in the server's token file, as its first start would write one."""
    (root / ".admin_token").write_text(ADMIN_TOKEN)
    (root / ".admin_token").chmod(0o600)


def admin(server: DaphneServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


def test_admin_models_endpoint_needs_the_token(server: DaphneServer) -> None:
    assert httpx.get(f"{server.url}/admin/models", timeout=10).status_code == 401
    wrong = httpx.get(f"{server.url}/admin/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    table = admin(server, "GET", "/admin/models").json()
    assert table["memory_budget_mb"] == 4096 and [row["name"] for row in table["models"]] == [SMOLLM2]


def test_models_command_prints_the_table_and_json(server: DaphneServer) -> None:
    server.chat(SMOLLM2)
    try:
        listed = server.manage("models")
        assert listed.returncode == 0, listed.stderr
        header, row, memory = listed.stdout.splitlines()
        assert header.split()[:3] == ["NAME", "STATE", "MEMORY"]
        assert row.split()[:2] == [SMOLLM2, "loaded"] and "first_request" in row
        assert memory.startswith("memory (estimated) of the loaded models") and "4,096 MB budget" in memory
        as_json = server.manage("models", "--json")
        assert as_json.returncode == 0, as_json.stderr
        smollm = json.loads(as_json.stdout)["models"][0]
        assert (smollm["state"], smollm["requests_today"], smollm["slots_busy"]) == ("loaded", 1, 0)
        assert smollm["expires_at"] and smollm["memory_mb"] > 90  # the weights alone are ~98 MB
    finally:
        admin(server, "POST", "/admin/unload", json={"model": "all"})


@pytest.mark.slow
def test_models_command_without_a_server_says_so_in_one_line(
    tmp_path: Path, migrated_database: DatabaseTemplate
) -> None:
    config = write_config(tmp_path, server={"port": free_port()})
    (tmp_path / ".admin_token").write_text(ADMIN_TOKEN)
    done = subprocess.run(
        [sys.executable, "manage.py", "models"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env=server_env(config, migrated_database.copy(tmp_path)),
    )
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no llamasite server is running" in done.stderr


# --- in Chromium -----------------------------------------------------------------------------------


@needs_chromium
def test_load_and_unload_turn_the_row_live_in_chromium(server: DaphneServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    log_in(browser, server.url, "/dashboard/models/")
    wait = WebDriverWait(browser, 30)
    row = f"#models tr[data-model='{SMOLLM2}']"

    # Through the page's own script: a push may redraw the row between finding it and using it.
    def state(driver: Any) -> str | None:
        return driver.execute_script(f'return document.querySelector("{row}")?.dataset.state')

    def click(action: str) -> None:
        browser.execute_script(f"document.querySelector(\"{row} button[data-action='{action}']\").click()")

    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-feed") == "open")
    assert state(browser) == "unloaded"
    browser.execute_script("document.body.dataset.sameDocument = 'yes'")  # gone if the page reloads

    click("load")
    wait.until(lambda driver: state(driver) == "loaded")
    cells = browser.execute_script(f'return document.querySelector("{row}").innerText')
    assert "admin_ui" in cells and "MB" in cells
    screenshot(browser, "models")

    click("unload")
    wait.until(lambda driver: state(driver) == "unloaded")
    assert browser.execute_script("return document.body.dataset.sameDocument") == "yes"
    assert server.loaded() == []
