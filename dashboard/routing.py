"""WebSocket routes of the dashboard."""

from django.urls import path

from dashboard.consumers import ModelTableConsumer, PullProgressConsumer, RequestFeedConsumer

websocket_urlpatterns = [
    path("ws/dashboard/feed/", RequestFeedConsumer.as_asgi()),
    path("ws/dashboard/models/", ModelTableConsumer.as_asgi()),
    path("ws/dashboard/pulls/", PullProgressConsumer.as_asgi()),
]
