"""What every console page's answer says to the browser: a Content-Security-Policy that lets it
run only the console's own scripts and styles (no inline script, handler or style attribute;
WebSockets and fetches to this server only; never framed), and Cache-Control: no-store, since
the pages show records, keys and prompts that must not stay in a shared or disk cache. The
admin's pages say no-store themselves (Django's never_cache)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",  # 'self' includes ws:// and wss:// to this host
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


class ConsoleHeadersMiddleware:
    """Sync and async middleware: the console's headers on every answer of the dashboard app."""

    async_capable = sync_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if iscoroutinefunction(self):
            return self._acall(request)
        return _with_console_headers(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return _with_console_headers(request, await self.get_response(request))


def _with_console_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    match = getattr(request, "resolver_match", None)
    if match is not None and match.app_name == "dashboard":
        response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        add_never_cache_headers(response)
    return response
