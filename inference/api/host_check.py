"""The API's Host check: a request must name this server as the pages' requests must
(`server.allowed_hosts`; the loopback names when it listens on loopback).

Without it a web page could reach a server on loopback through DNS rebinding (a name of the
page's own that turns into 127.0.0.1 after the page loaded, so the browser lets the page read
the answers): the attack behind Ollama's CVE-2024-28224. The API skips the pages' middleware
(llamasite.asgi), so each handler has its own check: the API's answers in its error shape, the
pages' with a plain 400. Both log one line, not the traceback Django's own check logs for
every such request (a scanner's, usually).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from inference.protocol import anthropic_output
from inference.protocol.errors import error_json_response

logger = logging.getLogger("django.security.DisallowedHost")

_ANTHROPIC_PATHS = "/v1/messages"


class AllowedHostMiddleware:
    """Async middleware: a request whose Host this server does not answer to gets a 400 in the
    API's error shape."""

    async_capable, sync_capable = True, False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            request.get_host()
        except DisallowedHost as refused:
            logger.warning("refused %s %s: %s", request.method, request.path, refused)
            return self.refused(request.path)
        return await self.get_response(request)

    @staticmethod
    def refused(path: str) -> HttpResponse:
        return _api_refusal(path)


class PagesAllowedHostMiddleware(AllowedHostMiddleware):
    """The same check for the pages, with a plain 400 (as Django's own check answers)."""

    @staticmethod
    def refused(path: str) -> HttpResponse:
        return HttpResponseBadRequest("Bad Request (400)", content_type="text/plain")


def _api_refusal(path: str) -> JsonResponse:
    message = (
        "This server does not answer to the Host this request names: add it to server.allowed_hosts "
        "in config.json to allow it."
    )
    if path.startswith(_ANTHROPIC_PATHS):
        return JsonResponse(anthropic_output.error_body(400, message), status=400)
    return error_json_response(400, message, code="invalid_host")
