"""API keys: created, listed and revoked (command and admin), required off loopback, limited to
models and quotas, attributed in the records; the safe Django defaults around them."""

from __future__ import annotations

import io
import logging
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient, Client

from inference.access import keys as access_keys
from inference.access import windows
from inference.config import load_config
from inference.management.commands.serve import warn_about_access
from inference.models import ApiKey, DailyUsage, RequestRecord
from inference.services import keys as key_services
from tests.conftest import (
    PROJECT_DIR,
    SMOLLM2,
    free_port,
    link_model,
    os_server_or_skip,
    start_server,
    validate_openai,
    wait_for,
    write_config,
)
from tests.database_servers import DatabaseTemplate, redis_server
from tests.record_factory import make_record

HELLO = [{"role": "user", "content": "Hi"}]
REQUIRED = {"require_api_key": True}


async def chat(secret: str | None = None, **body: Any) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    body = {"messages": HELLO, "max_tokens": 1, **body}
    return await AsyncClient().post("/v1/chat/completions", body, content_type="application/json", headers=headers)


def error_of(response: Any, status: int) -> dict:
    assert response.status_code == status, response.content
    validate_openai("ErrorResponse", response.json())
    return response.json()["error"]


def run_apikey(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("apikey", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_the_command_creates_lists_and_revokes_keys_storing_only_a_hash() -> None:
    secret, note = run_apikey("create", "ci-bot", "--models", "a, b", "--rpm", "30", "--tokens-per-day", "1000")
    secret = secret.strip()
    assert secret.startswith("sk-") and len(secret) > 40 and "not shown again" in note
    key = ApiKey.objects.get()
    assert (key.name, key.allowed_models, key.requests_per_minute, key.tokens_per_day) == (
        "ci-bot",
        ["a", "b"],
        30,
        1000,
    )
    assert secret[:11] == key.prefix and secret not in key.hashed and key.hashed != secret
    listing, _ = run_apikey("list")
    assert key.prefix in listing and secret not in listing and "active" in listing and "a,b" in listing
    assert access_keys.api_key_find(secret) == key
    run_apikey("revoke", key.prefix)
    assert "revoked" in run_apikey("list")[0]
    assert access_keys.api_key_find(secret) is None


@pytest.mark.slow
def test_command_mistakes_are_one_line_and_exit_1(tmp_path: Path, migrated_database: DatabaseTemplate) -> None:
    database_url = migrated_database.copy(tmp_path)
    for args, fragment in (
        (["revoke", "sk-nothing"], "no API key has the prefix"),
        (["create", "x", "--rpm", "-5"], "not a positive"),
    ):
        result = subprocess.run(
            [sys.executable, "manage.py", "apikey", *args],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            env={**os.environ, "DATABASE_URL": database_url},
        )
        assert result.returncode == 1 and fragment in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
async def test_required_keys_turn_away_missing_unknown_and_revoked_ones(use_config) -> None:
    use_config(server=REQUIRED)
    key, secret = await _create(name="app")
    for attempt in (None, "sk-unknown-key-0000000000", "not-even-a-key", secret[:-1]):
        error = error_of(await chat(attempt), 401)
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert error_of(await AsyncClient().get("/v1/models"), 401)["code"] == "invalid_api_key"
    assert (await AsyncClient().get("/health")).status_code == 200  # needs no key
    assert (await chat(secret)).status_code == 200
    await _revoke(key)
    assert error_of(await chat(secret), 401)["code"] == "invalid_api_key"
    records = [record async for record in RequestRecord.objects.all()]
    assert [record.api_key for record in records] == [key.prefix]  # 401s leave no request rows


async def test_an_api_key_is_not_an_admin_token(use_config) -> None:
    use_config(server=REQUIRED)
    _, secret = await _create(name="app")
    response = await AsyncClient().post(
        "/admin/unload",
        {"model": "all"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert error_of(response, 401)["code"] == "invalid_api_key"


@pytest.mark.slow
async def test_on_loopback_keys_are_optional_but_attributed(use_config) -> None:
    assert not load_config().server.api_key_required  # 127.0.0.1 by default
    key, secret = await _create(name="notebook")
    assert (await chat("sk-from-some-other-server")).status_code == 200  # the SDKs always send one
    assert (await chat()).status_code == 200
    assert (await chat(secret)).status_code == 200
    prefixes = [record.api_key async for record in RequestRecord.objects.order_by("id")]
    assert prefixes == ["", "", key.prefix]
    assert await DailyUsage.objects.filter(api_key=key.prefix, requests=1).aexists()


def test_require_api_key_defaults_by_the_listening_address(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    for host, required in (
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("0.0.0.0", True),
        ("192.168.1.20", True),
    ):
        config.write_text(f'{{"server": {{"host": "{host}"}}}}')
        assert load_config(config).server.api_key_required is required, host
    config.write_text('{"server": {"host": "0.0.0.0", "require_api_key": false}}')
    assert load_config(config).server.api_key_required is False


@pytest.mark.slow
async def test_a_key_sees_and_uses_only_its_models(use_config, models_dir: Path, smollm2_file: Path) -> None:
    link_model(smollm2_file, models_dir, "other")
    _, secret = await _create(name="limited", models=[SMOLLM2])
    headers = {"Authorization": f"Bearer {secret}"}
    listed = (await AsyncClient().get("/v1/models", headers=headers)).json()
    assert [model["id"] for model in listed["data"]] == [SMOLLM2]
    assert (await AsyncClient().get("/v1/models")).json()["data"].__len__() == 2  # no key: all
    error = error_of(await chat(secret, model="other"), 404)
    assert (
        error["code"] == "model_not_found"
        and "other" in error["message"]
        and "Available models: " + SMOLLM2 in error["message"]
    )
    assert error_of(await AsyncClient().get("/v1/models/other", headers=headers), 404)["code"] == "model_not_found"
    assert (await chat(secret, model=SMOLLM2)).status_code == 200


@pytest.mark.slow
async def test_requests_per_minute_over_the_limit_are_a_429_with_retry_after(use_config) -> None:
    _, secret = await _create(name="slow", requests_per_minute=2)
    assert [(await chat(secret)).status_code for _ in range(2)] == [200, 200]
    response = await chat(secret)
    error = error_of(response, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "quota_exceeded")
    assert 0 < int(response["Retry-After"]) <= 60
    assert (await chat()).status_code == 200  # other clients are not limited by it


def test_requests_per_minute_are_counted_by_this_process_while_redis_is_away(caplog: pytest.LogCaptureFixture) -> None:
    """With REDIS_URL the window is shared (test_scaleout); an unreachable Redis degrades to
    this process' own count, logged once, and is used again when it is back."""
    port = free_port()
    shared = windows.SharedWindows(f"redis://:hunter2@127.0.0.1:{port}/0")
    with caplog.at_level(logging.INFO, logger="inference.access.windows"):
        assert [shared.reserve("sk-away", 2).refused for _ in range(3)] == [False, False, True]
        refused = shared.reserve("sk-away", 2)
        assert refused.refused and 59 < refused.frees_in <= 60  # the limit still holds
        assert caplog.text.count(f"Redis at 127.0.0.1:{port} cannot be reached") == 1
        with os_server_or_skip(redis_server(port)):
            counts = [shared.reserve("sk-away", 2) for _ in range(3)]
            assert [(count.refused, count.used) for count in counts] == [(False, 1), (False, 2), (True, 2)]
            assert counts[2].frees_in == pytest.approx(60, abs=1)
    assert f"Redis at 127.0.0.1:{port} is back" in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.slow
async def test_tokens_per_day_over_the_limit_are_a_429_until_midnight(use_config) -> None:
    key, secret = await _create(name="thrifty", tokens_per_day=50)
    assert (await chat(secret)).status_code == 200
    record = await RequestRecord.objects.aget(api_key=key.prefix)
    assert 0 < record.prompt_tokens + record.completion_tokens < 50
    await RequestRecord.objects.filter(pk=record.pk).aupdate(prompt_tokens=60)
    response = await chat(secret)
    error = error_of(response, 429)
    assert error["code"] == "quota_exceeded" and "50 tokens" in error["message"]
    now = datetime.now(UTC)
    assert 0 < int(response["Retry-After"]) <= 86400 - (now.hour * 3600 + now.minute * 60) + 60


async def _create(**options: Any) -> tuple[ApiKey, str]:
    return await sync_to_async(key_services.api_key_create)(**options)


async def _revoke(key: ApiKey) -> None:
    await sync_to_async(key_services.api_key_revoke)(prefix=key.prefix)


@pytest.mark.django_db
def test_the_admin_creates_a_key_showing_its_secret_once_and_revokes(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/inference/apikey/add/",
        {"name": "from-admin", "models": f"{SMOLLM2}, other", "requests_per_minute": "5", "tokens_per_day": ""},
        follow=True,
    )
    assert response.status_code == 200
    shown = [str(message) for message in response.context["messages"]]
    secret = next(word for message in shown for word in message.split() if word.startswith("sk-"))
    key = ApiKey.objects.get(name="from-admin")
    assert key.allowed_models == [SMOLLM2, "other"] and key.requests_per_minute == 5
    assert access_keys.api_key_find(secret) == key
    listing = admin_client.get("/admin/inference/apikey/").content.decode()
    assert key.prefix in listing and secret not in listing
    assert secret not in admin_client.get(f"/admin/inference/apikey/{key.pk}/change/").content.decode()
    admin_client.post("/admin/inference/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None and access_keys.api_key_find(secret) is None


@pytest.mark.django_db
def test_usage_is_reported_per_key(admin_client: Client) -> None:
    key, _ = key_services.api_key_create(name="team-a")
    now = datetime.now(UTC)
    make_record(now, model="m", api_key=key.prefix, completion_tokens=7)
    make_record(now, model="m", completion_tokens=3)
    page = admin_client.get("/dashboard/").content.decode()
    assert 'id="per-key"' in page and "team-a" in page and "(no key)" in page
    only_key = admin_client.get("/dashboard/", {"key": key.prefix}).context["summary"]
    assert only_key.total["completion_tokens"] == 7
    no_key = admin_client.get("/dashboard/", {"key": "-"}).context["summary"]
    assert no_key.total["completion_tokens"] == 3
    out = io.StringIO()
    call_command("usage", "--since", "1d", "--key", key.prefix, "--json", stdout=out)
    assert '"completion_tokens": 7' in out.getvalue() and "team-a" in out.getvalue()


@pytest.mark.django_db
def test_serving_beyond_loopback_warns_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config.json"
    caplog.set_level(logging.WARNING, logger="inference.management.commands.serve")
    for server, warning in (
        ('{"host": "127.0.0.1"}', None),
        ('{"host": "0.0.0.0", "require_api_key": false}', "ANYONE who can reach"),
        ('{"host": "0.0.0.0"}', "there are none"),
    ):
        caplog.clear()
        config.write_text(f'{{"server": {server}}}')
        warn_about_access(load_config(config).server)
        assert (warning in caplog.text) if warning else not caplog.text
    key_services.api_key_create(name="k")
    caplog.clear()
    warn_about_access(load_config(config).server)
    assert not caplog.text


@pytest.mark.django_db
def test_django_admin_and_dashboard_need_staff_and_csrf(client: Client, admin_user: Any) -> None:
    for page in ("/admin/inference/apikey/", "/dashboard/"):
        assert client.get(page).status_code == 302  # to the login page
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(admin_user)
    assert csrf_client.post("/admin/inference/apikey/add/", {"name": "x"}).status_code == 403
    assert not ApiKey.objects.exists()


def test_unknown_host_names_are_refused(client: Client) -> None:
    assert client.get("/admin/login/", HTTP_HOST="attacker.example").status_code == 400


@pytest.mark.slow
def test_check_deploy_is_clean_behind_the_documented_proxy(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"server": {"behind_https_proxy": true, "allowed_hosts": ["llm.example.com"]}}')
    env = {**os.environ, "LLAMA_SERVER_CONFIG": str(config), "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}
    env.pop("DJANGO_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0 and "no issues" in result.stdout, result.stdout + result.stderr


@pytest.mark.server
def test_behind_the_proxy_the_client_it_names_is_recorded(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    link_model(smollm2_file, tmp_path / "models", SMOLLM2)
    config = write_config(tmp_path, server={"behind_https_proxy": True, "allowed_hosts": ["127.0.0.1"]}, n_ctx=512)
    server = start_server(config, tmp_path / "server.log", migrated_database, "--port", str(free_port()))
    try:
        forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        answer = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"messages": HELLO, "max_tokens": 1},
            headers=forwarded,
            timeout=60,
        )
        assert answer.status_code == 200
        wait_for(lambda: server.rows("SELECT client_address FROM inference_requestrecord") == [("203.0.113.7",)])
    finally:
        server.stop()
