"""Stored responses (the Responses API's `store`): kept by the records thread, found and deleted
per key."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from django.db import DatabaseError

from inference.config import get_config
from inference.connections import database_call, error_line
from inference.errors import ResponseNotFound
from inference.models import StoredResponse
from inference.protocol.responses import ResponseRequest
from inference.records.writer import writer
from inference.selectors.responses import stored_response_get

logger = logging.getLogger(__name__)


async def stored_response(response_id: str, *, api_key: str, param: str | None = None) -> StoredResponse:
    """The response stored under this id and key prefix ("": no key); a 404 if there is none
    (another key's responses do not exist for this one), a 503 if the database cannot be reached."""
    found = await database_call(
        lambda: stored_response_get(response_id, api_key=api_key), needed_for="the stored responses"
    )
    if found is None:
        raise ResponseNotFound(response_id, param=param)
    return found


async def response_delete(*, response_id: str, api_key: str) -> None:
    stored = await stored_response(response_id, api_key=api_key)
    await database_call(stored.delete, needed_for="the stored responses")


async def response_save(
    *, body: dict[str, Any], request: ResponseRequest, history: list[dict[str, Any]], api_key: str
) -> None:
    """Keep a finished response, written by the records thread in turn with the request records
    (while the database is away it waits there, and the response does not wait for it)."""
    columns = {
        "response_id": body["id"],
        "instance": get_config().server.instance,
        "api_key": api_key,
        "model": body["model"],
        "status": body["status"],
        "previous_response_id": request.previous_response_id or "",
        "body": body,
        "input_items": list(request.input),
        "history": history,
        "created_at": datetime.now(UTC),
    }
    written = writer.submit(lambda: StoredResponse.objects.create(**columns), label=f"response {body['id']}")
    try:
        await asyncio.shield(asyncio.wrap_future(written))
    except DatabaseError as error:
        logger.error("could not store response %s: %s", body["id"], error_line(error))
