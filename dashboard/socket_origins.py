"""Which pages may open the console's WebSockets: only this server's own (scheme, host and port
as the browser reached it) and the origins named in `server.cors_origins`.

A browser sends the staff's session cookie with a WebSocket handshake from any page of the same
site, whatever its port (SameSite counts no ports), and a WebSocket is not bound by CORS: a page
served from another port of the same machine could otherwise open the live feed, the models
table or the pulls. The handshake's Origin is what tells them apart. A `*` in cors_origins
opens the API to every page, never these sockets, which carry the staff's cookie.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from inference.config import get_config

_DEFAULT_PORTS = {"http": 80, "https": 443}
_Origin = tuple[str, str, int]  # scheme, host, port


class SameOriginValidator:
    """ASGI middleware for WebSockets: a handshake from another origin, without an Origin, or
    naming a Host this server does not answer to is refused (403) before it reaches a consumer."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not _allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def _allowed(scope: dict[str, Any]) -> bool:
    headers = {name: value.decode("latin1") for name, value in scope.get("headers", [])}
    origin = _parsed(headers.get(b"origin", ""))
    host = headers.get(b"host", "")
    domain, _ = split_domain_port(host)
    if origin is None or not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    server = get_config().server
    if server.behind_https_proxy and headers.get(b"x-forwarded-proto", "").lower() == "https":
        scheme = "https"
    return origin == _parsed(f"{scheme}://{host}") or origin in {
        _parsed(allowed) for allowed in server.cors_origins if allowed != "*"
    }


def _parsed(origin: str) -> _Origin | None:
    """(scheme, host, port) of an origin, the port filled in; None if it is not one."""
    try:
        parts = urlsplit(origin)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or ""), parts.port
    except ValueError:  # a port that is not a number, a malformed IPv6 address
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]
