"""WebSocket routes of the dashboard (the live request feed arrives with the usage records)."""

websocket_urlpatterns: list = []
