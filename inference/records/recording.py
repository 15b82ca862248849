"""The record of each inference request: exactly one RequestRecord (counted into its DailyUsage
row) per request that reached an inference endpoint, whatever ended it.

A view opens a RequestRecording and hands it the Generation that serving started (model, load
time, queue wait, prompt tokens, cache tier: `track`); the recording counts what the client is
handed, alone decides the outcome (ok, error, cancelled) and saves it, once: when the request
fails or its client leaves before the output starts (`until_output`), or when its events end
(`events`): after the last one, at an error mid-stream, or when the client goes away. The row
is committed by the records thread (inference.records.writer) before the last event is handed
on, so before the response's last bytes; while the database cannot be reached it waits there
instead, and the response does not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.layers import get_channel_layer
from django.db import DatabaseError, transaction

from inference.access.quotas import TokenWindow
from inference.config import get_config
from inference.models import DailyUsage, RequestRecord
from inference.protocol import error_details
from inference.records import metrics
from inference.records.writer import writer
from inference.runtime.jobs import Finished, Generation, JobEvent, TextDelta

logger = logging.getLogger(__name__)

# nginx's status for "the client closed the connection before the response".
CLIENT_CLOSED_REQUEST = 499

REQUEST_FEED_GROUP = "request-feed"


@dataclass
class RequestDraft:
    """What will become a request's RequestRecord, filled in as the request goes."""

    endpoint: str
    client_address: str = ""
    user_agent: str = ""
    started: float = field(default_factory=time.monotonic)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    completion_id: str = ""
    model: str = ""
    stream: bool = False
    status: str = RequestRecord.Status.OK
    http_status: int = 200
    error_code: str = ""
    error_message: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, found in a cache (not processed again)
    cache_tier: str = ""  # which: "slot", "ram", "disk" (see runtime.prompt_cache)
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of the completion tokens, spent thinking
    images: int = 0  # in the prompt (their positions count as prompt tokens)
    finish_reason: str = ""
    queue_wait_ms: float | None = None
    load_ms: float | None = None
    ttft_ms: float | None = None
    first_token_at: float | None = None
    tokens_per_second: float | None = None
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0
    end_user: str = ""
    api_key: str = ""  # the key's prefix
    source: str = ""  # the console page that sent it ("playground"); empty: an API client
    console_user: str = ""  # the staff user signed in to that page


# The draft's fields that are columns of RequestRecord (its timings on the monotonic clock are not).
_RECORD_FIELDS = (
    "completion_id",
    "model",
    "endpoint",
    "stream",
    "status",
    "http_status",
    "error_code",
    "error_message",
    "prompt_tokens",
    "cached_tokens",
    "cache_tier",
    "completion_tokens",
    "reasoning_tokens",
    "images",
    "finish_reason",
    "queue_wait_ms",
    "load_ms",
    "ttft_ms",
    "tokens_per_second",
    "draft_tokens_proposed",
    "draft_tokens_accepted",
    "client_address",
    "user_agent",
    "end_user",
    "api_key",
    "source",
    "console_user",
    "created_at",
)


class RequestRecording:
    """One request's record from the view that accepts the request to its last event; saved
    exactly once (see the module). Event loop only."""

    def __init__(self, *, endpoint: str, **client: str) -> None:
        """`client`: what the HTTP request says of who sent it (RequestDraft's client_address,
        user_agent, api_key, source, console_user)."""
        self.draft = RequestDraft(endpoint=endpoint, **client)
        # The request's share of its key's tokens per day (access.quota_check): what its jobs
        # claim is held there until the record that counts it is written.
        self.token_window: TokenWindow | None = None
        self._saved = False

    @asynccontextmanager
    async def until_output(self, *, requested_model: Callable[[], str]) -> AsyncIterator[None]:
        """Around what a request does before its output starts: an error there is recorded as
        the error it answers with (naming `requested_model()` if no model was resolved yet), a
        client that leaves as cancelled (499)."""
        try:
            yield
        except asyncio.CancelledError:
            self._end(RequestRecord.Status.CANCELLED, CLIENT_CLOSED_REQUEST)
            await asyncio.shield(self._save())
            raise
        except Exception as error:
            # The runtime's failures name the model they found (an alias resolved); others, the
            # model the request named.
            self.draft.model = self.draft.model or getattr(error, "model", "") or requested_model()
            self._fail(error)
            await asyncio.shield(self._save())
            raise

    def track(self, generation: Generation) -> Generation:
        """The generation, its facts noted in the draft and its events passing through the
        recording (see `events`)."""
        draft = self.draft
        draft.completion_id, draft.model, draft.stream = generation.id, generation.model, generation.stream
        draft.end_user, draft.load_ms, draft.queue_wait_ms = (
            generation.end_user,
            generation.load_ms,
            generation.queue_wait_ms,
        )
        draft.prompt_tokens, draft.cached_tokens = generation.prompt_tokens, generation.cached_tokens
        draft.cache_tier, draft.images = generation.cache_tier, generation.images
        generation.events = self.events(generation.events, choices=generation.choices)
        return generation

    async def events(self, events: AsyncIterator[JobEvent], *, choices: int) -> AsyncIterator[JobEvent]:
        """The generation's events, noting what the client has been handed; the record is saved
        before the last choice's Finished is handed on, or as the events end otherwise (an
        error, or the client gone: cancelled, with the tokens it was sent)."""
        draft = self.draft
        tokens: dict[int, int] = {}
        finished = 0
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    if draft.first_token_at is None:
                        draft.first_token_at = time.monotonic()
                        draft.ttft_ms = round((draft.first_token_at - draft.started) * 1000, 1)
                    tokens[event.index] = event.completion_tokens
                elif isinstance(event, Finished):
                    tokens[event.index] = event.completion_tokens
                    draft.draft_tokens_proposed += event.draft_proposed
                    draft.draft_tokens_accepted += event.draft_accepted
                    draft.reasoning_tokens += event.reasoning_tokens
                    finished += 1
                    draft.finish_reason = event.finish_reason
                    if finished == choices:
                        draft.completion_tokens = sum(tokens.values())
                        await asyncio.shield(self._save())
                draft.completion_tokens = sum(tokens.values())
                yield event
        except Exception as error:  # failed after the output began
            self._fail(error)
            raise
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # an async generator, typed AsyncIterator (no aclose)
            if draft.status == RequestRecord.Status.OK and not self._saved:  # the client went away
                self._end(RequestRecord.Status.CANCELLED, 200 if draft.stream else CLIENT_CLOSED_REQUEST)
            await asyncio.shield(self._save())

    def _end(self, status: str, http_status: int, code: str | None = None, message: str = "") -> None:
        draft = self.draft
        draft.status, draft.http_status = status, http_status
        draft.error_code, draft.error_message = code or "", message

    def _fail(self, error: Exception) -> None:
        http_status, code, message = error_details(error)
        self._end(RequestRecord.Status.ERROR, http_status, code, message)

    async def _save(self) -> None:
        """Count the request in the metrics and write its record; only the first call does.
        Then its claimed tokens are counted by the record, no longer held."""
        if self._saved:
            return
        self._saved = True
        try:
            await self._write()
        finally:
            if self.token_window is not None:
                self.token_window.release()

    async def _write(self) -> None:
        draft = self.draft
        finished = time.monotonic()
        duration_ms = round((finished - draft.started) * 1000, 1)
        metrics.request_count(
            model=draft.model,
            endpoint=draft.endpoint,
            status=draft.status,
            http_status=draft.http_status,
            prompt_tokens=draft.prompt_tokens,
            completion_tokens=draft.completion_tokens,
            ttft_ms=draft.ttft_ms,
            duration_ms=duration_ms,
            cached_tokens=draft.cached_tokens,
            cache_tier=draft.cache_tier,
            draft_tokens_proposed=draft.draft_tokens_proposed,
            draft_tokens_accepted=draft.draft_tokens_accepted,
        )
        config = get_config()
        if not config.records.request_records:
            return
        if draft.first_token_at is not None and draft.completion_tokens > 1:
            generating = finished - draft.first_token_at
            draft.tokens_per_second = round((draft.completion_tokens - 1) / generating, 2) if generating else None
        columns = {name: getattr(draft, name) for name in _RECORD_FIELDS}
        columns.update(instance=config.server.instance, duration_ms=duration_ms)
        label = f"request {draft.completion_id or draft.endpoint} on {draft.model or 'no model'}"
        try:
            record = await asyncio.wrap_future(writer.submit(lambda: request_record_write(columns), label=label))
        except DatabaseError as error:
            logger.error("could not record request %s on %s: %s", draft.completion_id, draft.model, error)
            return
        if record is not None:  # None: it waits for the database, and the feed goes without it
            await request_feed_publish(record)


def request_record_write(columns: dict[str, Any]) -> RequestRecord:
    """Insert a request's row and count it into its daily rollup, in one transaction."""
    with transaction.atomic():
        record = RequestRecord.objects.create(**columns)
        daily_usage_add(record)
    return record


def daily_usage_add(record: RequestRecord) -> None:
    """Count one record into its model's rollup for its UTC day (inside the caller's transaction)."""
    usage, _ = DailyUsage.objects.select_for_update().get_or_create(
        instance=record.instance,
        day=record.created_at.astimezone(UTC).date(),
        model=record.model,
        api_key=record.api_key,
    )
    usage.count_request(
        record.status, record.prompt_tokens, record.completion_tokens, record.ttft_ms, record.tokens_per_second
    )
    usage.save()


async def request_feed_publish(record: RequestRecord) -> None:
    """Push a finished request to the dashboards' live feed (Channels group)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(REQUEST_FEED_GROUP, {"type": "request.finished", "record": feed_item(record)})
    except Exception as exc:  # the feed is best effort: a full or broken layer never fails a request
        logger.warning("could not publish request %s to the live feed: %s", record.completion_id, exc)


def feed_item(record: RequestRecord) -> dict[str, Any]:
    return {
        "created_at": record.created_at.isoformat(),
        "instance": record.instance,
        "model": record.model,
        "endpoint": record.endpoint,
        "source": record.source,
        "status": record.status,
        "http_status": record.http_status,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "ttft_ms": record.ttft_ms,
        "duration_ms": record.duration_ms,
        "tokens_per_second": record.tokens_per_second,
    }
