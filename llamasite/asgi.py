"""ASGI entry point: the API and the pages each get their own Django handler; WebSockets go to
the dashboard's consumers."""

import os
from typing import Any

from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llamasite.settings")
pages_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.signals import request_started  # noqa: E402
from django.db import close_old_connections, reset_queries  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from dashboard.socket_origins import SameOriginValidator  # noqa: E402
from inference.urls import API_PATH_PREFIXES  # noqa: E402


class APIHandler(ASGIHandler):
    """Django for the OpenAI and admin APIs, behind only the middleware they need, and without a
    thread of their own per request.

    Django's built-in middlewares run their hooks through sync_to_async, a thread hop each way;
    sessions, auth, messages, CSRF and static files serve the pages, and would only add to every
    API request's time to first token.

    Django also runs each request in a ThreadSensitiveContext: its first thread-sensitive sync
    call (the request_started signal's receivers) starts a thread, and the request's end joins
    it. Each hop waits for a thread to get a core, and while llama.cpp's threads hold the cores
    that wait is long: it was most of /health's latency during streams (py-spy; README,
    Performance). The API's own database work runs
    on fresh connections off the loop (connections.database_call, thread_sensitive=False), so its
    requests' few thread-sensitive calls — Django's signal receivers — share asgiref's one
    long-lived thread instead.
    """

    def __init__(self) -> None:
        super().__init__()
        # Requests being answered, their last byte not yet handed to daphne: a graceful shutdown
        # waits for them (a model's worker finishes a stream before its last chunks are sent).
        self.answering = 0

    def load_middleware(self, is_async: bool = False) -> None:
        with override_settings(MIDDLEWARE=settings.API_MIDDLEWARE):
            super().load_middleware(is_async)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        self.answering += 1
        try:
            await self.handle(scope, receive, send)  # scope["type"] is "http": http_app routes only those
        finally:
            self.answering -= 1


api_app = APIHandler()


def _request_started_receivers_for_pages_only() -> None:
    """Django's request_started receivers (reset_queries, close_old_connections) are sync, so
    every request's `asend` runs them through sync_to_async: a thread hop before its view (about
    half of an idle /health's server time, more while a model's threads take the cores). The API
    has nothing for them to do: its database work runs on fresh connections off the loop. So they
    run, in one hop as before, for the pages' handler only. (Django's test clients disconnect
    and reconnect close_old_connections around their requests; once reconnected it runs for
    every sender again, as Django's default.)"""
    receivers = (reset_queries, close_old_connections)
    for receiver in receivers:
        request_started.disconnect(receiver)

    def run_receivers(**kwargs: Any) -> None:
        for receiver in receivers:
            receiver(**kwargs)

    async def for_pages(sender: type, **kwargs: Any) -> None:
        if sender is ASGIHandler:
            await sync_to_async(run_receivers)(sender=sender, **kwargs)

    request_started.connect(for_pages, weak=False, dispatch_uid="llamasite.request_started_for_pages")


_request_started_receivers_for_pages_only()


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    app = api_app if scope["path"].startswith(API_PATH_PREFIXES) else pages_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
