"""The console's live channels: each finished request, and the progress of model pulls, pushed
to the staff's open pages."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from inference.pull_jobs import PULL_GROUP, pull_jobs
from inference.records import REQUEST_FEED_GROUP

FORBIDDEN = 4403


class StaffGroupConsumer(AsyncJsonWebsocketConsumer):
    """A staff member's subscription to one channel-layer group; anyone else is refused."""

    group = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_staff:
            await self.close(code=FORBIDDEN)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.opened()

    async def opened(self) -> None:
        """Send what a page needs before the first update (nothing, by default)."""

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)


class RequestFeedConsumer(StaffGroupConsumer):
    group = REQUEST_FEED_GROUP

    async def request_finished(self, message: dict[str, Any]) -> None:
        await self.send_json(message["record"])


class PullProgressConsumer(StaffGroupConsumer):
    """Every pull this server runs: all of them on connect, then each change as it happens."""

    group = PULL_GROUP

    async def opened(self) -> None:
        await self.send_json({"pulls": pull_jobs().snapshot()})

    async def pull_progress(self, message: dict[str, Any]) -> None:
        await self.send_json({"pulls": [message["pull"]]})
