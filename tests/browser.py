"""A real headless Chromium for the console's browser tests (Debian's chromium and
chromium-driver; the tests that need them are skipped without them)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import PROJECT_DIR, DaphneServer, ServerFactory

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them when run as root)",
)
ARTIFACTS = PROJECT_DIR / "test-artifacts"
STAFF_PASSWORD = "browser-test-password"


@contextmanager
def chromium() -> Iterator[Any]:
    """A selenium driver of a headless Chromium, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2200",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console's messages, CSP's among them
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: Any, base_url: str, next_path: str) -> None:
    """Log in as the staff account "admin" (password STAFF_PASSWORD), landing on `next_path`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}/admin/login/?next={next_path}")
    if driver.find_elements(By.NAME, "username"):
        driver.find_element(By.NAME, "username").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(STAFF_PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    else:  # logged in already: the login page sent it on to the admin
        driver.get(f"{base_url}{next_path}")
    # The path, not the end of the URL: the login page's own URL ends with `?next=<next_path>`.
    landed = urlsplit(f"{base_url}{next_path}")
    WebDriverWait(driver, 20).until(
        lambda d: (
            urlsplit(d.current_url)[2:4] == landed[2:4] and d.execute_script("return document.readyState") == "complete"
        )
    )


def screenshot(driver: Any, page: str) -> None:
    """Save test-artifacts/<page>.png (for docs/console.md and docs/models.md)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{page}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


@contextmanager
def console_server(server_factory: ServerFactory, name: str, **settings: Any) -> Iterator[DaphneServer]:
    """A server of `server_factory(name, **settings)` (n_ctx 2048 unless they say otherwise) with
    the staff account "admin" (password STAFF_PASSWORD)."""
    with server_factory(name, **{"n_ctx": 2048, **settings}) as running:
        running.create_superuser(STAFF_PASSWORD)
        yield running


@contextmanager
def staff_client(server: DaphneServer) -> Iterator[httpx.Client]:
    """An HTTP client logged in as the staff account."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        login = client.get("/admin/login/")
        client.post(
            "/admin/login/",
            data={"username": "admin", "password": STAFF_PASSWORD, "csrfmiddlewaretoken": csrf_token(login.text)},
        )
        yield client


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found[1]


# Replaces the page's fetch for one path: each request's JSON body is kept in
# window.stubbedRequests, and it is answered with the next of the given streams (text/event-stream),
# piece by piece; a null piece holds the stream until window.resumeStub() is called. Without
# streams (null), the requests go on to the server. Other paths go to the real fetch. (Scripts
# run by the driver are not subject to the page's CSP.)
_STUB_FETCH = """
const [path, streams] = arguments;
const realFetch = window.fetch.bind(window);
let resume = null;
window.stubbedRequests = [];
window.resumeStub = () => { if (resume) resume(); };
window.fetch = async (url, init) => {
  if (new URL(url, location.href).pathname !== path) return realFetch(url, init);
  window.stubbedRequests.push(JSON.parse(init.body));
  if (streams === null) return realFetch(url, init);
  const pieces = streams.shift();
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    async pull(controller) {
      while (pieces.length && pieces[0] === null) {
        pieces.shift();
        await new Promise((resolve) => { resume = resolve; });
      }
      if (pieces.length) controller.enqueue(encoder.encode(pieces.shift()));
      else controller.close();
    },
  });
  return new Response(body, { headers: { "Content-Type": "text/event-stream" } });
};
"""


def stub_fetch(driver: Any, path: str, streams: list[list[str | None]]) -> None:
    """Answer the page's fetches of `path` with `streams`, one a request (see _STUB_FETCH)."""
    driver.execute_script(_STUB_FETCH, path, streams)


def spy_fetch(driver: Any, path: str) -> None:
    """Keep the JSON bodies of the page's fetches of `path` (see stubbed_requests); the server
    answers them."""
    driver.execute_script(_STUB_FETCH, path, None)


def stubbed_requests(driver: Any) -> list[Any]:
    """The JSON bodies the page has sent to the stubbed path, in order."""
    return driver.execute_script("return window.stubbedRequests")
