"""The console's WebSockets: the live feed of finished requests, the live models table, and the
progress of model pulls, pushed to the staff's open pages."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer

from dashboard.model_feed import model_table_group, model_table_message, publisher
from inference.records.recording import REQUEST_FEED_GROUP
from inference.services.pulls import PULL_GROUP, pull_jobs

FORBIDDEN = 4403


class NoSuchSocket(AsyncWebsocketConsumer):
    """A WebSocket path no page opens: refused at the handshake (daphne answers 403)."""

    async def connect(self) -> None:
        await self.close()


class StaffConsumer(AsyncJsonWebsocketConsumer):
    """Staff only (others are closed with 4403), joined to `groups_joined()` while connected."""

    def groups_joined(self) -> tuple[str, ...]:
        return ()

    @property
    def staff(self) -> bool:
        user = self.scope.get("user")
        return user is not None and user.is_staff

    async def connect(self) -> None:
        if not self.staff:
            await self.close(code=FORBIDDEN)
            return
        for group in self.groups_joined():
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.opened()

    async def opened(self) -> None:
        """Send what a page needs before the first update (nothing, by default)."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **_: Any) -> None:
        """The sockets only push: what a page sends is ignored (never decoded, never an error)."""

    async def disconnect(self, code: int) -> None:
        for group in self.groups_joined():
            await self.channel_layer.group_discard(group, self.channel_name)


class RequestFeedConsumer(StaffConsumer):
    """Each finished request, as it is recorded."""

    def groups_joined(self) -> tuple[str, ...]:
        return (REQUEST_FEED_GROUP,)

    async def request_finished(self, message: dict[str, Any]) -> None:
        await self.send_json(message["record"])


class ModelTableConsumer(StaffConsumer):
    """The models table: at once, then after every change (dashboard.model_feed)."""

    _watching = False

    def groups_joined(self) -> tuple[str, ...]:
        return (model_table_group(), REQUEST_FEED_GROUP)

    async def opened(self) -> None:
        publisher.page_opened()
        self._watching = True
        await self.send_json(await model_table_message())  # what changed since the page was rendered

    async def disconnect(self, code: int) -> None:
        if self._watching:
            publisher.page_closed()
            self._watching = False
        await super().disconnect(code)

    async def model_table(self, message: dict[str, Any]) -> None:
        await self.send_json(message["table"])

    async def request_finished(self, message: dict[str, Any]) -> None:
        publisher.changed()  # today's counts changed


class PullProgressConsumer(StaffConsumer):
    """Every pull this server runs: all of them on connect, then each change as it happens."""

    def groups_joined(self) -> tuple[str, ...]:
        return (PULL_GROUP,)

    async def opened(self) -> None:
        await self.send_json({"pulls": pull_jobs().snapshot()})

    async def pull_progress(self, message: dict[str, Any]) -> None:
        await self.send_json({"pulls": [message["pull"]]})
