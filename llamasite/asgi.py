"""ASGI entry point: the API and the pages each get their own Django handler; WebSockets go to
the dashboard's consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llamasite.settings")
pages_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from inference.urls import API_PATH_PREFIXES  # noqa: E402


class APIHandler(ASGIHandler):
    """Django for the OpenAI and admin APIs, behind only the middleware they need.

    Django's built-in middlewares run their hooks through sync_to_async, a thread hop each way;
    sessions, auth, messages, CSRF and static files serve the pages, and would only add to every
    API request's time to first token.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        with override_settings(MIDDLEWARE=settings.API_MIDDLEWARE):
            super().load_middleware(is_async)


api_app = APIHandler()


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    app = api_app if scope["path"].startswith(API_PATH_PREFIXES) else pages_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
