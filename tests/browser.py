"""A real headless Chromium (Debian's chromium and chromium-driver, driven by selenium) for the
console's page tests; `make test` installs both when run as root, and the tests skip without."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_DIR, DaphneServer

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them when run as root)",
)
ARTIFACTS = PROJECT_DIR / "test-artifacts"
PASSWORD = "browser-test-password"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module's tests, 1,400 px wide."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,2200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def log_in(browser: Any, server: DaphneServer, next_path: str) -> None:
    """Sign in as the server's "admin" (see DaphneServer.create_superuser) and open `next_path`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/admin/login/?next={next_path}")
    if browser.find_elements(By.NAME, "username"):
        browser.find_element(By.NAME, "username").send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    else:  # signed in already: the login page sent the browser on
        browser.get(f"{server.url}{next_path}")
    WebDriverWait(browser, 20).until(lambda driver: driver.current_url.endswith(next_path))


def screenshot(browser: Any, name: str) -> Path:
    """Save the page as test-artifacts/<name>.png (the README shows them)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path
