"""The live feed: each finished request, pushed to the staff's open dashboards."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from inference.records import REQUEST_FEED_GROUP

FORBIDDEN = 4403


class RequestFeedConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_staff:
            await self.close(code=FORBIDDEN)
            return
        await self.channel_layer.group_add(REQUEST_FEED_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(REQUEST_FEED_GROUP, self.channel_name)

    async def request_finished(self, message: dict[str, Any]) -> None:
        await self.send_json(message["record"])
