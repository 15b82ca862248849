"""The console's pages tell the browser to run only their own scripts and styles (a
Content-Security-Policy, with nothing inline to allow) and to keep nothing in a cache; a real
Chromium shows each page under that policy without a violation."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.test import Client

from dashboard.headers import CONTENT_SECURITY_POLICY
from tests.browser import chromium, console_server, log_in, needs_chromium
from tests.conftest import DaphneServer, ServerFactory

CONSOLE_PAGES = [
    "/dashboard/",
    "/dashboard/?range=30d",
    "/dashboard/models/",
    "/dashboard/playground/",
    "/dashboard/pull/",
]
INLINE = {
    # (a json_script's data block is not run, so the policy lets it be)
    "script without src": re.compile(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>", re.IGNORECASE),
    "event handler attribute": re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE),
    "style attribute": re.compile(r"<[^>]+\sstyle\s*=", re.IGNORECASE),
    "style element": re.compile(r"<style[\s>]", re.IGNORECASE),
}


@pytest.mark.parametrize("path", [*CONSOLE_PAGES, "/dashboard/export.csv"])
def test_console_answers_carry_the_policy_and_no_store(use_config, admin_client: Client, path: str) -> None:
    response = admin_client.get(path)
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "no-store" in response["Cache-Control"]


@pytest.mark.parametrize("path", CONSOLE_PAGES)
def test_console_pages_have_nothing_inline_the_policy_would_block(use_config, admin_client: Client, path: str) -> None:
    html = admin_client.get(path).content.decode()
    found = {what: match[0] for what, pattern in INLINE.items() if (match := pattern.search(html))}
    assert not found, (path, found)


@pytest.mark.parametrize("path", ["/admin/", "/admin/inference/requestrecord/", "/admin/inference/apikey/"])
def test_the_admin_pages_that_show_records_and_keys_are_not_stored_either(
    use_config, admin_client: Client, path: str
) -> None:
    assert "no-store" in admin_client.get(path)["Cache-Control"]


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with console_server(server_factory, "headers") as running:
        yield running


@needs_chromium
def test_chromium_shows_every_console_page_without_a_policy_violation(server: DaphneServer) -> None:
    with chromium() as browser:
        log_in(browser, server.url, CONSOLE_PAGES[0])
        for path in CONSOLE_PAGES:
            log_in(browser, server.url, path)
            violations = [
                entry["message"]
                for entry in browser.get_log("browser")
                if "Content Security Policy" in entry["message"]
            ]
            assert not violations, (path, violations)
            assert browser.execute_script("return document.querySelectorAll('script[src]').length") > 0
