"""One place to start: the admin is branded llamasite, its home links the console pages, every
console page links back, "View site" opens the console, and the list pages keep their essential
columns in view at 1,280 px (in Chromium, against a real server with records)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from dashboard.pages import CONSOLE_PAGES
from inference.models import DiscoveredModel
from tests.browser import console_server, log_in, needs_chromium, screenshot
from tests.conftest import DaphneServer, ServerFactory
from tests.record_factory import make_record


def test_the_admin_is_branded_and_its_home_links_the_console(admin_client) -> None:
    home = admin_client.get("/admin/").content.decode()
    assert "<title>Site administration | llamasite</title>" in home or "| llamasite</title>" in home
    assert 'id="site-name"><a href="/admin/">llamasite</a>' in home
    assert 'href="/dashboard/">View site</a>' in home
    for page in CONSOLE_PAGES:
        assert f">{page.title}</a>" in home


def test_the_request_list_filters_without_scanning_the_records(admin_client) -> None:
    from inference.admin import RECORDED_ENDPOINTS
    from inference.api import urls
    from inference.api import views as api

    routes = {
        f"/{pattern.pattern}"
        for pattern in urls.urlpatterns
        if issubclass(getattr(pattern.callback, "cls", object), api.GenerationView)
    }
    assert set(RECORDED_ENDPOINTS) == routes
    DiscoveredModel.objects.create(
        instance="here:8080",
        name="m",
        path="/m.gguf",
        size_bytes=1,
        file_modified_at=timezone.now(),
        last_seen_at=timezone.now(),
    )
    make_record(datetime.now(UTC), model="m", endpoint="/v1/completions")
    make_record(datetime.now(UTC), model="m", endpoint="/v1/chat/completions", source="playground")
    page = admin_client.get("/admin/inference/requestrecord/?endpoint=/v1/completions")
    assert page.context["cl"].result_count == 1
    assert admin_client.get("/admin/inference/requestrecord/?source=playground").context["cl"].result_count == 1
    assert admin_client.get("/admin/inference/requestrecord/?source=").context["cl"].result_count == 1
    executed: list[str] = []

    def record(execute: Any, sql: str, *args: Any) -> Any:
        executed.append(sql)
        return execute(sql, *args)

    # (Not CaptureQueriesContext: it reconnects reset_queries to request_started, which
    # llamasite.asgi keeps for the pages only, and later tests would see the API hop again.)
    with connection.execute_wrapper(record):
        html = admin_client.get("/admin/inference/requestrecord/").content.decode()
    assert "?model=m" in html and "?instance=here%3A8080" in html
    scans = [sql for sql in executed if "DISTINCT" in sql and "inference_requestrecord" in sql]
    assert executed and not scans, scans


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with console_server(server_factory, "admin-console") as server:
        for stream in (False, True):
            chat(server, stream)
        yield server


def chat(server: DaphneServer, stream: bool) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        timeout=60,
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": stream},
    )
    assert response.status_code == 200


@needs_chromium
def test_admin_and_console_link_each_other_both_ways(server: DaphneServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, server.url, "/admin/")
    assert browser.find_element(By.ID, "site-name").text == "llamasite"
    for page in CONSOLE_PAGES:
        browser.get(f"{server.url}/admin/")
        browser.find_element(By.CSS_SELECTOR, "#console-links").find_element(By.LINK_TEXT, page.title).click()
        assert (
            browser.find_element(By.CSS_SELECTOR, f"nav.console a[data-nav='{page.url_name}']").get_attribute(
                "aria-current"
            )
            == "page"
        )
        browser.find_element(By.CSS_SELECTOR, "nav.console a[data-nav='admin']").click()  # and back
        assert browser.current_url == f"{server.url}/admin/"
    browser.find_element(By.LINK_TEXT, "VIEW SITE").click()
    assert browser.current_url == f"{server.url}/dashboard/"


@needs_chromium
@pytest.mark.parametrize("changelist", ["discoveredmodel", "requestrecord", "loadevent"])
def test_list_pages_keep_their_columns_in_view_at_1280_px(server: DaphneServer, browser: Any, changelist: str) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(1280, 900)
    try:
        log_in(browser, server.url, f"/admin/inference/{changelist}/")
        assert browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        overflow = browser.execute_script(
            "const table = document.getElementById('result_list');"
            "return [table.getBoundingClientRect().right, document.documentElement.clientWidth,"
            " table.parentElement.scrollWidth - table.parentElement.clientWidth];"
        )
        right, width, scrolled = overflow
        assert right <= width and scrolled <= 0, (changelist, overflow)
        if changelist == "requestrecord":
            screenshot(browser, "admin-requests")
    finally:
        browser.set_window_size(1400, 2200)
