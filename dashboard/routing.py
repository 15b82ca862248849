"""WebSocket routes of the dashboard; any other path is refused at the handshake (403), not a
server error."""

from django.urls import path, re_path

from dashboard.consumers import ModelTableConsumer, NoSuchSocket, PullProgressConsumer, RequestFeedConsumer

websocket_urlpatterns = [
    path("ws/dashboard/feed/", RequestFeedConsumer.as_asgi()),
    path("ws/dashboard/models/", ModelTableConsumer.as_asgi()),
    path("ws/dashboard/pulls/", PullProgressConsumer.as_asgi()),
    re_path(r"", NoSuchSocket.as_asgi()),
]
