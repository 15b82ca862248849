"""The management commands' way to the running server: its admin API, with the admin token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from django.core.management.base import CommandError

from inference.api.authentication import admin_token, admin_token_source
from inference.config import ConfigError, load_config, set_config

_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def server_url() -> str:
    """The running server's base URL, from server.host and server.port in config.json."""
    try:
        config = load_config()
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    set_config(config)
    host = "127.0.0.1" if config.server.host in _WILDCARD_HOSTS else config.server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.server.port}"


def admin_post(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST to the server's admin API; any problem becomes a one-line CommandError."""
    return _admin_call(path, "POST", json.dumps(body or {}).encode())


def admin_get(path: str) -> dict[str, Any]:
    """GET from the server's admin API; any problem becomes a one-line CommandError."""
    return _admin_call(path, "GET", None)


def _admin_call(path: str, method: str, data: bytes | None) -> dict[str, Any]:
    base = server_url()
    token = admin_token(create=False)
    if not token:
        raise CommandError(f"no admin token in {admin_token_source()}: has the server been started?")
    request = urllib.request.Request(
        f"{base}{path}",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise CommandError(f"the server refused: {_error_message(exc)}") from None
    except urllib.error.URLError as exc:
        raise CommandError(f"no llamasite server is running at {base} ({exc.reason})") from None
    except OSError as exc:
        raise CommandError(f"no answer from the server at {base} ({exc})") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        return json.load(error)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code}"
