"""Who is asking, decided once per request (`authenticate`): an API key, the staff user signed in
to a console page, or the admin token.

- **API keys** (`Authorization: Bearer`, or Anthropic's `x-api-key`): see `inference.access.keys`.
- **Console pages** (the playground) name themselves in the `X-Llamasite-Console` header and
  carry the session cookie and the CSRF token, as the pages' own forms do. The API's paths skip
  the pages' middleware (see `inference.api.handler`), so the session and the CSRF check are
  applied here, and only to these requests.
- **The admin token** guards /admin/*: from LLAMA_SERVER_ADMIN_TOKEN or `.admin_token` beside
  config.json (owner-only, created at the server's first start; the management commands read it
  to talk to the running server).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import Enum
from importlib import import_module
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware

from inference.access.keys import api_key_check, authorization_of, bearer_token
from inference.config import get_config
from inference.connections import database_call
from inference.errors import InvalidApiKey, InvalidRequest, PermissionDenied
from inference.models import ApiKey
from inference.secret_files import read_or_create_secret, read_secret

ADMIN_TOKEN_ENV_VAR = "LLAMA_SERVER_ADMIN_TOKEN"
CONSOLE_HEADER = "X-Llamasite-Console"
CONSOLE_PAGES = ("playground",)


class Credentials(Enum):
    """What an endpoint accepts."""

    NONE = "none"  # /health, /metrics
    KEY = "key"  # an API key (required only with server.require_api_key)
    KEY_OR_CONSOLE = "key_or_console"  # the inference endpoints, which the playground calls too
    ADMIN = "admin"  # the admin token


@dataclass(frozen=True)
class ConsoleCaller:
    page: str  # which console page sent the request: the record's `source`
    user: str  # the staff user's name: the record's `console_user`


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: its key (None: none, or not needed), or a console page's user."""

    key: ApiKey | None = None
    console: ConsoleCaller | None = None

    @property
    def api_key(self) -> str:
        return self.key.prefix if self.key else ""

    @property
    def allowed_models(self) -> list[str] | None:
        return self.key.allowed_models if self.key else None


async def authenticate(request: HttpRequest, accepted: Credentials) -> Identity:
    """The request's identity, or a 401 (no valid key or admin token where one is needed) or 403
    (a console request without a staff user signed in, or without the page's CSRF token)."""
    if accepted is Credentials.ADMIN:
        _admin_token_check(request)
        return Identity()
    if accepted is Credentials.NONE:
        return Identity()
    if accepted is Credentials.KEY_OR_CONSOLE and (console := await console_caller(request)) is not None:
        return Identity(console=console)
    return Identity(key=await api_key_check(authorization_of(request.headers)))


async def console_caller(request: HttpRequest) -> ConsoleCaller | None:
    """The console page and staff user behind a request, or None for an API client's."""
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
    checker = CsrfViewMiddleware(lambda _: None)
    checker.process_request(request)  # reads the CSRF cookie
    return checker.process_view(request, _no_view, (), {}) is not None


def _no_view(*_: Any) -> None:
    """Stands for the view in the CSRF check, which asks whether the view is exempt."""


def _signed_in_user(request: HttpRequest) -> Any:
    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    request.session = session_store(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    return get_user(request)


def admin_token_path() -> Path:
    return get_config().path.parent / ".admin_token"


def _token_from_environment() -> str | None:
    return os.environ.get(ADMIN_TOKEN_ENV_VAR, "").strip() or None


def admin_token_source() -> str:
    """Where the admin token comes from, for people (never the token itself)."""
    if _token_from_environment():
        return f"the environment variable {ADMIN_TOKEN_ENV_VAR}"
    return f"the file {admin_token_path()}"


def admin_token(*, create: bool) -> str | None:
    """The admin token (never empty); with `create`, a new one is written into its file if it
    has none."""
    if token := _token_from_environment():
        return token
    path = admin_token_path()
    return read_or_create_secret(path) if create else read_secret(path)


def _admin_token_check(request: HttpRequest) -> None:
    """`Authorization: Bearer <admin token>`, or a 401."""
    given = bearer_token(request.headers.get("Authorization"))
    expected = admin_token(create=True)
    # As bytes: compare_digest refuses str with characters beyond ASCII (a client's choice).
    if not given or not expected or not hmac.compare_digest(_bytes(given), _bytes(expected)):
        raise InvalidApiKey(
            "Missing or wrong admin token: send 'Authorization: Bearer <token>' with the token "
            f"from {admin_token_source()}."
        )


def _bytes(token: str) -> bytes:
    return token.encode("utf-8", "surrogatepass")  # an environment variable may hold any code point
