"""Who may talk to the server from a browser: the console's WebSockets only from the server's
own origin (or a listed one), the API only under a Host the server answers to, CORS headers on
the API alone; odd socket paths are refused, not a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from channels.testing import WebsocketCommunicator
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from dashboard.consumers import RequestFeedConsumer
from dashboard.socket_origins import SameOriginValidator
from llamasite.asgi import application
from tests.browser import console_server, staff_client
from tests.conftest import DaphneServer, ServerFactory

SOCKETS = ("/ws/dashboard/feed/", "/ws/dashboard/models/", "/ws/dashboard/pulls/")
LISTED = "http://localhost:3000"


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with console_server(server_factory, "origins", server={"cors_origins": [LISTED]}) as running:
        yield running


def open_socket(server: DaphneServer, path: str, cookie: str, **headers: str) -> Any:
    port = httpx.URL(server.url).port
    return connect(f"ws://127.0.0.1:{port}{path}", additional_headers={"Cookie": f"sessionid={cookie}", **headers})


def test_the_console_sockets_open_only_from_the_servers_own_origin_or_a_listed_one(server: DaphneServer) -> None:
    port = httpx.URL(server.url).port
    with staff_client(server) as client:
        cookie = client.cookies["sessionid"]
        for path in SOCKETS:
            for origin in (server.url, LISTED):
                with open_socket(server, path, cookie, Origin=origin) as socket:
                    if path != "/ws/dashboard/feed/":  # the others open with what they show
                        assert socket.recv(timeout=30)
            for origin in (
                f"http://127.0.0.1:{port + 1}",
                f"http://localhost:{port}",
                f"https://127.0.0.1:{port}",
                "http://127.0.0.1",
                "null",
                "http://evil.example",
            ):
                with pytest.raises(InvalidStatus) as refused:
                    open_socket(server, path, cookie, Origin=origin)
                assert refused.value.response.status_code == 403, (path, origin)
            with pytest.raises(InvalidStatus):
                open_socket(server, path, cookie)  # no Origin at all


def test_a_socket_path_no_page_opens_is_a_403_not_a_500(server: DaphneServer) -> None:
    for path in ("/ws/dashboard/nope/", "/ws/", "/v1/models", "/ws/dashboard/feed/extra"):
        with pytest.raises(InvalidStatus) as refused:
            open_socket(server, path, "none", Origin=server.url)
        assert refused.value.response.status_code == 403, path
    assert "Traceback" not in server.log() and "No route found" not in server.log()


async def handshake(origin: str | None, host: str = "127.0.0.1:8000", scheme: str = "ws", **more: str) -> bool:
    """Whether a handshake with these headers reaches the consumer (in-process)."""
    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin is not None else [])
    headers += [(name.replace("_", "-").encode(), value.encode()) for name, value in more.items()]
    accepted = []

    class Accepting(RequestFeedConsumer):
        async def connect(self) -> None:
            accepted.append(True)
            await self.accept()

    communicator = WebsocketCommunicator(SameOriginValidator(Accepting.as_asgi()), "/ws/dashboard/feed/", headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected and bool(accepted)


async def test_the_origin_must_match_scheme_host_and_port(use_config) -> None:
    use_config(server={"cors_origins": ["*", "http://tools.example:8080"]})
    assert await handshake("http://127.0.0.1:8000")
    assert await handshake("HTTP://127.0.0.1:8000")  # origins compare case-insensitively
    assert await handshake("http://tools.example:8080")
    assert not await handshake("http://evil.example")  # "*" opens the API, never these sockets
    assert not await handshake("https://127.0.0.1:8000")
    assert not await handshake("http://127.0.0.1:8001")
    assert not await handshake("http://127.0.0.1:8000", host="evil.example:8000")  # a Host it does not answer to
    assert not await handshake("http://evil.example:8000", host="evil.example:8000")
    assert not await handshake("http://127.0.0.1:notaport")
    assert not await handshake(None)
    assert await handshake("https://127.0.0.1", host="127.0.0.1", scheme="wss")


async def test_behind_a_tls_proxy_the_origin_is_https(use_config, settings: Any) -> None:
    use_config(server={"behind_https_proxy": True})
    settings.ALLOWED_HOSTS = ["llm.example"]  # as server.allowed_hosts would make it
    assert await handshake("https://llm.example", host="llm.example", x_forwarded_proto="https")
    assert not await handshake("http://llm.example", host="llm.example", x_forwarded_proto="https")


async def asgi_get(path: str, **headers: str) -> httpx.Response:
    """A GET through the real ASGI application (the API's and the pages' handlers)."""
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get(path, headers=headers)


@pytest.mark.parametrize("path", ["/v1/models", "/health", "/metrics", "/v1/messages", "/admin/models"])
async def test_the_api_answers_only_to_the_hosts_it_serves(use_config, path: str) -> None:
    refused = await asgi_get(path, host="evil.example")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "server.allowed_hosts" in error["message"]
    if path == "/v1/messages":
        assert refused.json()["type"] == "error"
    for host in ("127.0.0.1", "localhost:8080", "[::1]:8080"):
        assert (await asgi_get(path, host=host)).status_code != 400, host


async def test_cors_headers_are_on_the_api_only(use_config) -> None:
    api = await asgi_get("/v1/models", origin="http://localhost:3000")
    assert api.headers["access-control-allow-origin"] == "*"
    for path in ("/dashboard/", "/admin/login/", "/openapi.json", "/static/dashboard/dashboard.css"):
        page = await asgi_get(path, origin="http://localhost:3000")
        assert "access-control-allow-origin" not in page.headers, path
