"""The models page's live table: pushed to the open pages (a Channels group) when something it
shows changes, at most every PUSH_INTERVAL seconds.

What changes is told from the model pool's threads (its watchers: loads, load progress, unloads,
requests starting and ending, pins) and by finished requests' records (today's counts). This
process's pages see this process's models, so the publisher watches only while a page of it is
open. It lives on the server's event loop; the table is read off it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from channels.layers import get_channel_layer

from inference.config import get_config
from inference.connections import database_call
from inference.runtime.pool import ModelPool, model_pool
from inference.selectors.model_table import model_table

logger = logging.getLogger(__name__)

# A few tables a second: a busy server changes state with every request.
PUSH_INTERVAL = 0.25


def model_table_group() -> str:
    """This server's pages' group: servers sharing a channel layer (Redis) each push their own
    table (a group name allows no ':', so the instance name is hashed)."""
    return "model-table-" + hashlib.sha256(get_config().server.instance.encode()).hexdigest()[:16]


async def model_table_message() -> dict[str, Any]:
    """The table as the pages receive it."""
    table = await database_call(model_table, needed_for="the models' usage today")
    return table.as_dict()


class ModelTablePublisher:
    """Pushes the table after each change, throttled; event loop only, except `changed`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: ModelPool | None = None
        self._pages = 0
        self._scheduled = False
        self._last_push = 0.0
        self._push_task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    def page_opened(self) -> None:
        self._pages += 1
        if self._pages == 1:
            self._loop = asyncio.get_running_loop()
            self._watched = model_pool()
            self._watched.watchers.add(self.changed)

    def page_closed(self) -> None:
        self._pages -= 1
        if self._pages == 0 and self._watched is not None:
            self._watched.watchers.remove(self.changed)
            self._watched = None

    def changed(self) -> None:
        """Something shown changed (any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._schedule)
        except RuntimeError:  # the loop closed meanwhile (the server is stopping)
            pass

    def _schedule(self) -> None:
        if self._scheduled or not self._pages:
            return
        self._scheduled = True
        delay = max(0.0, self._last_push + PUSH_INTERVAL - time.monotonic())
        asyncio.get_running_loop().call_later(delay, self._start_push)

    def _start_push(self) -> None:
        self._push_task = asyncio.ensure_future(self._push(self._push_task))

    async def _push(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():  # in order: an older table never lands last
            await asyncio.wait([previous])
        # Changes from here on schedule the next push: none is missed while this one reads.
        self._scheduled = False
        self._last_push = time.monotonic()
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            table = await model_table_message()
            await layer.group_send(model_table_group(), {"type": "model.table", "table": table})
        except Exception as exc:  # best effort: the page catches up at the next change
            logger.warning("could not push the models table: %s", exc)


publisher = ModelTablePublisher()
