"""The database going away under a running server: PostgreSQL restarted and stopped for a while
under a real server (every request still answered, no record lost), and, fast and without a
server, the records queue and the API keys served from memory meanwhile."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, OperationalError
from django.test import AsyncClient

from inference.access import keys as access_keys
from inference.access import quotas
from inference.errors import DatabaseUnavailable, InvalidApiKey
from inference.records.writer import RecordWriter
from inference.services import keys as key_services
from tests.conftest import (
    HI,
    SMOLLM2,
    DaphneServer,
    ServerFactory,
    os_server_or_skip,
    wait_for,
)
from tests.database_servers import PostgresServer, migrate, postgres_server, query_rows, with_database_name

# --- the records queue, with a stand-in database -------------------------------------------


class StandInDatabase:
    """Writes that succeed while `up` and raise what a stopped PostgreSQL raises otherwise."""

    def __init__(self) -> None:
        self.up = True
        self.written: list[str] = []

    def write(self, name: str) -> Callable[[], str]:
        def write() -> str:
            if not self.up:
                raise OperationalError(
                    'connection to server at "127.0.0.1" failed: Connection refused\n\tIs the server running?'
                )
            self.written.append(name)
            return name

        return write


@pytest.fixture
def database() -> StandInDatabase:
    return StandInDatabase()


@pytest.fixture
def writer() -> Iterator[RecordWriter]:
    writer = RecordWriter(pending_limit=lambda: 3, retry_seconds=0.05)
    yield writer
    writer.close()


def test_records_wait_while_the_database_is_away_then_are_written_in_order(
    database: StandInDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    writer = RecordWriter(pending_limit=lambda: 1000, retry_seconds=0.05)
    assert writer.submit(database.write("before"), label="before").result() == "before"
    database.up = False
    waiting = [f"r{number}" for number in range(250)]  # more than one flush batch
    futures = [writer.submit(database.write(name), label=name) for name in waiting]
    assert [future.result(timeout=5) for future in futures] == [None] * 250  # kept, not failed
    assert writer.waiting == 250
    database.up = True
    assert writer.submit(database.write("after"), label="after").result(timeout=5) in ("after", None)
    wait_for(lambda: writer.waiting == 0, seconds=10)
    writer.close()
    assert database.written == ["before", *waiting, "after"]
    assert caplog.text.count("database unreachable") == 1
    assert "Connection refused" in caplog.text and "Is the server running" not in caplog.text  # one line
    assert "database is back: wrote 251 records" in caplog.text or "database is back: wrote 250 records" in caplog.text


def test_a_full_queue_drops_the_oldest_unwritten_records_and_counts_them(
    writer: RecordWriter, database: StandInDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    database.up = False
    for number in range(5):
        writer.submit(database.write(f"r{number}"), label=f"r{number}").result(timeout=5)
    assert writer.waiting == 3
    database.up = True
    wait_for(lambda: "database is back" in caplog.text, seconds=10)
    assert database.written == ["r2", "r3", "r4"] and writer.waiting == 0
    assert caplog.text.count("dropping the oldest") == 1 and "(the first: r0)" in caplog.text
    assert "database is back: wrote 3 records (2 dropped" in caplog.text


def test_a_write_is_retried_once_on_a_fresh_connection(writer: RecordWriter, database: StandInDatabase) -> None:
    calls: list[int] = []

    def fails_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return "written"

    assert writer.submit(fails_once, label="once").result(timeout=5) == "written"
    assert len(calls) == 2 and writer.waiting == 0


def test_a_write_that_cannot_succeed_fails_and_is_not_kept(writer: RecordWriter) -> None:
    def violates() -> None:
        raise IntegrityError("duplicate key")

    with pytest.raises(IntegrityError):
        writer.submit(violates, label="bad").result(timeout=5)
    assert writer.waiting == 0


def test_stopping_while_the_database_is_away_says_what_is_lost(
    database: StandInDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    writer = RecordWriter(pending_limit=lambda: 10, retry_seconds=60)
    database.up = False
    for name in ("a", "b"):
        writer.submit(database.write(name), label=name).result(timeout=5)
    writer.close()
    assert "stopping with 2 records not written" in caplog.text


# --- API keys and quotas while the database is away (in process) --------------------------


@pytest.fixture
def keys_from_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """access's memory of keys and of the outage, fresh for the test; the database is asked
    again at once after a failure."""
    monkeypatch.setattr(access_keys, "_recent_keys", access_keys._RecentKeys())
    monkeypatch.setattr(access_keys, "_outage", access_keys._DatabaseOutage())
    monkeypatch.setattr(access_keys, "DATABASE_RETRY_SECONDS", 0)


def database_away() -> Any:
    return mock.patch.object(access_keys, "api_key_find", side_effect=OperationalError("connection refused"))


async def test_a_key_verified_lately_is_accepted_while_the_database_is_away(
    use_config, keys_from_memory: None, caplog: pytest.LogCaptureFixture
) -> None:
    use_config({"require_api_key": True})
    key, secret = await sync_to_async(key_services.api_key_create)(name="k")
    assert await access_keys.api_key_check(f"Bearer {secret}") == key
    with database_away(), caplog.at_level(logging.INFO):
        assert await access_keys.api_key_check(f"Bearer {secret}") == key
        with pytest.raises(DatabaseUnavailable) as unknown:
            await access_keys.api_key_check("Bearer sk-not-a-key-we-know")
        with pytest.raises(InvalidApiKey):
            await access_keys.api_key_check(None)  # no key: a 401 needs no database
        response = await AsyncClient().get("/v1/models", headers={"Authorization": "Bearer sk-unknown-too"})
    assert unknown.value.status == 503 and "database" in unknown.value.message
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["code"] == "database_unavailable"
    assert caplog.text.count("database unreachable for API key checks") == 1

    await sync_to_async(key_services.api_key_revoke)(prefix=key.prefix)
    with pytest.raises(InvalidApiKey):
        await access_keys.api_key_check(f"Bearer {secret}")  # the database is back, and says revoked
    assert "database is back" in caplog.text
    with database_away(), pytest.raises(DatabaseUnavailable):
        await access_keys.api_key_check(f"Bearer {secret}")  # no longer remembered


async def test_without_a_cache_every_key_waits_for_the_database(use_config, keys_from_memory: None) -> None:
    use_config({"require_api_key": True, "api_key_cache_seconds": 0})
    _, secret = await sync_to_async(key_services.api_key_create)(name="k")
    await access_keys.api_key_check(f"Bearer {secret}")
    with database_away(), pytest.raises(DatabaseUnavailable):
        await access_keys.api_key_check(f"Bearer {secret}")


async def test_tokens_per_day_are_not_checked_while_the_database_is_away(
    use_config, keys_from_memory: None, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = await sync_to_async(key_services.api_key_create)(name="k", tokens_per_day=1)
    refused = OperationalError("connection refused")
    with mock.patch.object(quotas, "_tokens_today", side_effect=refused), caplog.at_level(logging.WARNING):
        await quotas.quota_check(key)
        await quotas.quota_check(key)
    assert caplog.text.count("tokens per day are not checked") == 1


# --- a real PostgreSQL under a real server --------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this module's own: the tests stop and restart it."""
    with os_server_or_skip(postgres_server()) as server:
        yield server


@pytest.fixture
def server(server_factory: ServerFactory, postgres: PostgresServer) -> Iterator[DaphneServer]:
    """A server on `postgres` that requires API keys, with two models (the second is loaded
    while the database is away)."""
    query_rows(with_database_name(postgres.url, "postgres"), "CREATE DATABASE outage")
    database_url = with_database_name(postgres.url, "outage")
    migrate(database_url)
    with server_factory(
        "outage",
        names=(SMOLLM2, "loaded-meanwhile"),
        database=database_url,
        server={"require_api_key": True},
        n_ctx=512,
        idle_timeout=-1,
    ) as server:
        yield server


def chat(server: DaphneServer, secret: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": SMOLLM2, "messages": HI, "max_tokens": 2, **body},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )


def stream(server: DaphneServer, secret: str) -> tuple[int, str]:
    """A streamed chat: its status and completion id; asserts it ended with [DONE]."""
    body = {"model": SMOLLM2, "messages": HI, "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return response.status_code, json.loads(lines[0][6:])["id"]


def recorded(server: DaphneServer) -> set[str]:
    return {row[0] for row in server.rows("SELECT completion_id FROM inference_requestrecord")}


@pytest.mark.postgres
def test_a_postgresql_restart_and_outage_under_a_running_server(server: DaphneServer, postgres: PostgresServer) -> None:
    created = server.manage("apikey", "create", "outage")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    answered = [chat(server, secret)]
    assert answered[0].status_code == 200

    postgres.stop()  # a restart with no request meanwhile: the server's connections are dead
    postgres.start()
    answered.append(chat(server, secret))
    assert answered[-1].status_code == 200
    assert answered[-1].json()["id"] in recorded(server)  # written at once, not kept for later

    postgres.stop()
    during = [chat(server, secret), chat(server, secret, model="loaded-meanwhile")]
    status, streamed = stream(server, secret)
    completion = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": SMOLLM2, "prompt": "Once", "max_tokens": 2},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert [response.status_code for response in [*during, completion]] == [200, 200, 200] and status == 200
    unknown = chat(server, "sk-unknownunknownunknown")
    assert unknown.status_code == 503
    assert unknown.json()["error"]["type"] == "server_error" and "database" in unknown.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    outage_ids = {response.json()["id"] for response in [*during, completion]} | {streamed}

    postgres.start()
    after = [chat(server, secret) for _ in range(3)]
    assert [response.status_code for response in after] == [200, 200, 200]
    wait_for(lambda: outage_ids | {after[-1].json()["id"]} <= recorded(server))
    wait_for(lambda: "database is back: wrote" in server.log())  # logged just after the last row
    loads = server.rows("SELECT kind, reason FROM inference_loadevent WHERE model = 'loaded-meanwhile'")
    assert loads == [("load", "first_request")]
    assert len(recorded(server)) == len(set(recorded(server))) == 2 + len(outage_ids) + 3  # each once
    log = server.log()
    # The four requests and the load of the outage, and perhaps the first requests after it.
    assert log.count("records waiting") == 1 and int(re.findall(r"database is back: wrote (\d+) records", log)[0]) >= 5
    assert log.count("database unreachable for API key checks") == 1
    assert "Internal Server Error" not in log and "Traceback" not in log, log
