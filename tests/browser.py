"""A real headless Chromium (Debian's chromium and chromium-driver) for the console's browser
tests: the skip mark when it is missing, the driver fixture, logging in, screenshots."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import PROJECT_DIR

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them when run as root)",
)
ARTIFACTS = PROJECT_DIR / "test-artifacts"
PASSWORD = "browser-test-password"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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


def log_in(driver: Any, url: str, page: str, password: str = PASSWORD) -> None:
    """Log in as "admin" through the admin's login form, landing on `page` (a path)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/admin/login/?next={page}")
    driver.find_element(By.NAME, "username").send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(driver, 20).until(lambda current: current.current_url.endswith(page))


def screenshot(driver: Any, page: str) -> None:
    """Save test-artifacts/<page>.png (for the README)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{page}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
