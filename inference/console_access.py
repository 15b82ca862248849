"""Requests from the console's own pages (the playground): the staff user signed in to the page
stands in for an API key.

Such a request names its page in the `X-Llamasite-Console` header and carries the session
cookie and the CSRF token, as the page's own forms do: the API's paths skip the pages'
middleware (see llamasite.asgi), so the session and the CSRF check are applied here, and only
to these requests. Any other request is an API client's, authenticated by its key.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware

from inference.connections import database_call
from inference.errors import InvalidRequest, PermissionDenied

CONSOLE_HEADER = "X-Llamasite-Console"
CONSOLE_PAGES = ("playground",)


@dataclass(frozen=True)
class ConsoleCaller:
    page: str  # which console page sent the request: the record's `source`
    user: str  # the staff user's name: the record's `console_user`


async def console_caller(request: HttpRequest) -> ConsoleCaller | None:
    """The console page and staff user behind a request, or None for an API client's; a 403
    for a console request without a staff user signed in, or without the page's CSRF token."""
    page = request.headers.get(CONSOLE_HEADER)
    if page is None:
        return None
    if page not in CONSOLE_PAGES:
        raise InvalidRequest(f"Unknown console page '{page}' in {CONSOLE_HEADER}.")
    if _csrf_refused(request):
        raise PermissionDenied("The console's CSRF token is missing or wrong: reload the page.")
    user = await database_call(lambda: _signed_in_user(request), needed_for="the signed-in users")
    if not (user.is_active and user.is_staff):
        raise PermissionDenied("Sign in as a staff user (at /admin/login/) to use the console.")
    return ConsoleCaller(page=page, user=user.get_username())


def _csrf_refused(request: HttpRequest) -> bool:
    checker = CsrfViewMiddleware(lambda _: None)  # type: ignore[arg-type, return-value]
    checker.process_request(request)  # reads the CSRF cookie
    return checker.process_view(request, _no_view, (), {}) is not None


def _no_view(*_: Any) -> None:
    """Stands for the view in the CSRF check, which asks whether the view is exempt."""


def _signed_in_user(request: HttpRequest) -> Any:
    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    request.session = session_store(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    return get_user(request)
