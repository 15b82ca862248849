"""The dashboard in a real headless Chromium against a real server: charts with data, the live
feed receiving a request as it finishes; a screenshot is kept in test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.browser import console_server, log_in, needs_chromium, screenshot
from tests.conftest import SMOLLM2, DaphneServer, ServerFactory

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with console_server(server_factory, "browser") as server:
        yield server


def chat(server: DaphneServer, **body: object) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, **body},
        timeout=60,
    )
    assert response.status_code in (200, 404)


def test_dashboard_charts_and_live_feed_in_chromium(server: DaphneServer, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chat(server)
    chat(server, stream=True)
    chat(server, model="missing-model")

    log_in(browser, server.url, "/dashboard/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "svg[data-chart='requests']"))

    points = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('svg[data-chart]')]"
        ".map(svg => [svg.dataset.chart, svg.querySelectorAll('.bar, .dot').length]))"
    )
    assert points["requests"] > 0 and points["tokens"] > 0 and points["ttft"] > 0, points
    assert points["model-requests"] >= 2, points
    assert browser.find_element(By.CSS_SELECTOR, "#totals .card b").text == "3"
    stylesheet_loaded = browser.execute_script("return getComputedStyle(document.querySelector('.card')).borderRadius")
    assert stylesheet_loaded == "8px"  # the dashboard's own CSS was served

    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-feed") == "open")
    chat(server, max_tokens=4)
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#feed tbody tr.new"))
    row = browser.find_element(By.CSS_SELECTOR, "#feed tbody tr.new").text
    assert SMOLLM2 in row and "ok 200" in row

    screenshot(browser, "dashboard")
