"""ASGI entry point: the API and the pages each get their own Django handler (the API's is
inference.api.handler's); WebSockets go to the dashboard's consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llamasite.settings")
pages_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from dashboard.socket_origins import SameOriginValidator  # noqa: E402
from inference.api.handler import APIHandler, request_started_receivers_for_pages_only  # noqa: E402
from inference.api.urls import API_PATH_PREFIXES  # noqa: E402

api_app = APIHandler()
request_started_receivers_for_pages_only()


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]  # ASGI's call, as Django's handlers take it
    app = api_app if scope["path"].startswith(API_PATH_PREFIXES) else pages_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
