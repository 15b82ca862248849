"""The API's way through Django, kept apart from the pages' and lighter than Django's default:
every workaround that keeps the event loop free and the time to first token short is here, each
with the measurement that justifies it (docs/performance.md; `tests/test_token_path.py` guards
them: no thread hop before an API answer is sent).

1. `APIHandler`: a Django handler of its own behind only the middleware the API needs.
2. `request_started` receivers run for the pages' handler only.
3. `APIView`: DRF's checks and the JSON rendering run inline; the one authentication step.

The other two live with what they serve: the console's session and CSRF check, applied by hand
to the console's API requests (`inference.api.authentication`), and the database reads off the
loop on fresh connections (`inference.connections.database_call`, and `inference.access.keys`'s
read that remembers an outage), which the services and the key checks share.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from adrf.views import APIView as AsyncAPIView
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries
from django.http import HttpRequest
from django.template.response import SimpleTemplateResponse
from django.test.utils import override_settings
from rest_framework.request import Request

from inference.api.authentication import Credentials, Identity, authenticate
from inference.records import metrics


class APIHandler(ASGIHandler):
    """Django for the OpenAI and admin APIs, behind only the middleware they need, and without a
    thread of their own per request.

    Django's built-in middlewares run their hooks through sync_to_async, a thread hop each way;
    sessions, auth, messages, CSRF and static files serve the pages, and would only add to every
    API request's time to first token.

    Django also runs each request in a ThreadSensitiveContext: its first thread-sensitive sync
    call (the request_started signal's receivers) starts a thread, and the request's end joins
    it. Each hop waits for a thread to get a core, and while llama.cpp's threads hold the cores
    that wait is long: it was most of /health's latency during streams (py-spy; docs/performance.md,
    Performance). The API's own database work runs on fresh connections off the loop
    (connections.database_call, thread_sensitive=False), so its requests' few thread-sensitive
    calls — Django's signal receivers — share asgiref's one long-lived thread instead.
    """

    def __init__(self) -> None:
        super().__init__()
        # Requests being answered, their last byte not yet handed to daphne: a graceful shutdown
        # waits for them (a model's worker finishes a stream before its last chunks are sent).
        self.answering = 0

    def load_middleware(self, is_async: bool = False) -> None:
        with override_settings(MIDDLEWARE=settings.API_MIDDLEWARE):
            super().load_middleware(is_async)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]  # ASGI's call, as Django's handler takes it
        self.answering += 1
        try:
            await self.handle(scope, receive, send)  # scope["type"] is "http": only those come here
        finally:
            self.answering -= 1


def request_started_receivers_for_pages_only() -> None:
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


class APIView(AsyncAPIView):
    """adrf's async APIView, authenticated in one step (`credentials`; the result is
    `self.identity`), with DRF's `initial` checks run inline and its response rendered inline.

    adrf runs the checks through sync_to_async, a thread hop on every request; ours (content
    negotiation) are quick and never touch the database. Django renders a response with a sync
    `render` (DRF's Response) through sync_to_async too, unless `render` is a coroutine function:
    rendering JSON is quick, so it is done here and `render` replaced by an async no-op.
    """

    credentials = Credentials.KEY
    identity = Identity()

    async def async_dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        self.args, self.kwargs = args, kwargs
        request = self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        try:
            self.initial(request, *args, **kwargs)
            handler = getattr(self, request.method.lower(), None)
            if request.method.lower() not in self.http_method_names or handler is None:
                handler = self.http_method_not_allowed
            else:
                self.identity = await authenticate(request._request, self.credentials)
            response = handler(request, *args, **kwargs)
            if asyncio.iscoroutine(response):
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
            if response.status_code == 401:
                metrics.unauthorized_count(endpoint_of(request))
        self.response = self.finalize_response(request, response, *args, **kwargs)
        if isinstance(self.response, SimpleTemplateResponse):
            self.response.render()
            self.response.render = _rendered(self.response)
        return self.response


def _rendered(response: SimpleTemplateResponse) -> Callable[[], Awaitable[SimpleTemplateResponse]]:
    async def render() -> SimpleTemplateResponse:
        return response

    return render


def endpoint_of(request: HttpRequest | Request) -> str:
    """The route that answered, as `/v1/models/{model_id}`: never the path a client typed."""
    return "/" + _ROUTE_PARAMETER.sub(r"{\1}", request.resolver_match.route)


_ROUTE_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")
