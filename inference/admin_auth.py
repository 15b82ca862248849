"""The admin token that guards /admin/*: from LLAMA_SERVER_ADMIN_TOKEN or an owner-only file.

The file is `.admin_token` beside config.json, created at the server's first start; the
management commands read it to talk to the running server.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from inference.access import bearer_token
from inference.config import get_config
from inference.errors import InvalidApiKey
from inference.secret_files import read_or_create_secret, read_secret

ADMIN_TOKEN_ENV_VAR = "LLAMA_SERVER_ADMIN_TOKEN"


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


class AdminTokenRequired(BasePermission):
    """DRF permission: `Authorization: Bearer <admin token>`, or a 401 in OpenAI shape."""

    def has_permission(self, request: Request, view: object) -> bool:
        given = bearer_token(request.headers.get("Authorization"))
        expected = admin_token(create=True)
        # As bytes: compare_digest refuses str with characters beyond ASCII (a client's choice).
        if not given or not expected or not hmac.compare_digest(_bytes(given), _bytes(expected)):
            raise InvalidApiKey(
                "Missing or wrong admin token: send 'Authorization: Bearer <token>' with the token "
                f"from {admin_token_source()}."
            )
        return True


def _bytes(token: str) -> bytes:
    return token.encode("utf-8", "surrogatepass")  # an environment variable may hold any code point
