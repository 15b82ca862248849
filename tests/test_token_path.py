"""The path from a request to its answer, as daphne calls the ASGI application: an API answer is
sent without a thread hop (no per-request thread, no sync signal receivers, no sync render);
the pages keep Django's request_started receivers. A stream sends the tokens that are already
waiting in one write."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.core.signals import request_started
from django.db import close_old_connections

from inference.runtime.channel import Job
from inference.runtime.jobs import ChatJob, Finished, Generation, TextDelta
from inference.serving.streams import sse_stream
from llamasite.asgi import api_app, application


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What passes through sync_to_async (by name), and "sent" where an answer's body was sent."""
    happened: list[str] = []
    call = SyncToAsync.__call__

    async def recorded(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        happened.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", recorded)
    return happened


async def served(path: str, happened: list[str], answering: list[int] | None = None) -> int:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
        "asgi": {"version": "3.0"},
    }
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    status = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    async def send(message: dict) -> None:
        if answering is not None:
            answering.append(api_app.answering)
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif not message.get("more_body"):
            happened.append("sent")

    await application(scope, receive, send)
    return status[0]


@pytest.fixture
def as_served() -> Iterator[None]:
    """Django's receivers as daphne serves them: the test clients reconnect close_old_connections
    for every sender after their requests (see llamasite.asgi)."""
    reconnected = request_started.disconnect(close_old_connections)
    yield
    if reconnected:
        request_started.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.usefixtures("as_served")
async def test_an_api_answer_is_sent_without_a_thread_hop(
    use_config, hops: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def recorded(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    for path in ("/health", "/v1/models", "/metrics"):
        await served(path, [])  # the first may start the process's long-lived threads
        monkeypatch.setattr(threading.Thread, "start", recorded)
        hops.clear()
        assert await served(path, hops) == 200
        # Django closes the response on an executor thread after it was sent; nothing before.
        assert hops[0] == "sent", hops
        assert not started, "a thread was started for the request"
        monkeypatch.setattr(threading.Thread, "start", start)


@pytest.mark.django_db
async def test_requests_being_answered_are_counted_for_a_graceful_shutdown(use_config) -> None:
    """serve's shutdown waits while api_app.answering: a stream's worker is done before its last
    chunks are sent."""
    answering: list[int] = []
    assert await served("/health", [], answering) == 200
    assert answering == [1, 1] and api_app.answering == 0


@pytest.mark.django_db
@pytest.mark.usefixtures("as_served")
async def test_a_page_request_still_runs_the_request_started_receivers(use_config, hops: list[str]) -> None:
    assert await served("/no-such-page", hops) == 404
    assert hops[0] == "request_started_receivers_for_pages_only.<locals>.run_receivers"


async def test_events_already_waiting_go_out_in_one_write() -> None:
    """A stream sends in one write the chunks of every event that was already there when the
    chunk before it was made; an event that comes later gets a write of its own."""
    job = Job(ChatJob(messages=()), asyncio.get_running_loop())
    generation = Generation(model="m", prompt_tokens=1, events=job.events(), waiting=job.waiting)

    async def chunks() -> AsyncIterator[bytes]:
        async for event in generation.events:
            yield f"{event.text if isinstance(event, TextDelta) else event.finish_reason};".encode()

    stream = sse_stream(generation, chunks(), done=b"[DONE]")
    job.emit(TextDelta("a", 1))
    job.emit(TextDelta("b", 2))
    assert await anext(stream) == b"a;b;"
    job.emit(TextDelta("c", 3))
    assert await anext(stream) == b"c;"
    job.emit(TextDelta("d", 4))
    job.emit(Finished("stop", 1, 4))
    assert [write async for write in stream] == [b"d;stop;", b"[DONE]"]
