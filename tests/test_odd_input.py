"""No 500 on odd input: every route, every method, every header and token shape an attacker
might send to a server that requires keys is answered with a 4xx (or served), never a 5xx, and
the server logs no traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.sync.client import connect

from tests.browser import console_server, staff_client
from tests.conftest import SMOLLM2, DaphneServer, ServerFactory

API_ROUTES = [
    "/health",
    "/metrics",
    "/v1/models",
    f"/v1/models/{SMOLLM2}",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/responses/resp_nope",
    "/v1/responses/resp_nope/input_items",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/admin/models",
    "/admin/load",
    "/admin/unload",
    "/admin/reload",
    "/admin/reap",
]
PAGE_ROUTES = [
    "/openapi.json",
    "/admin/",
    "/admin/login/",
    "/admin/inference/requestrecord/",
    "/dashboard/",
    "/dashboard/models/",
    "/dashboard/playground/",
    "/dashboard/pull/",
    "/static/dashboard/feed.js",
]
ODD_PATHS = [
    "/v1/models/%00",
    "/v1/models/..%2f..%2fetc%2fpasswd",
    "/v1/models/" + "x" * 4000,
    "/v1/models/%ff%fe",
    "/v1/responses/%ff",
    "/v1/responses/" + "r" * 2000 + "/input_items",
    "/dashboard/%ff",
    "/admin/%2e%2e/",
    "/%2e%2e/%2e%2e/etc/passwd",
    "//v1//models",
    "/v1/chat/completions/",
    "/static/../manage.py",
    "/static/%2e%2e/db.sqlite3",
    "/v1/responses/resp_x/input_items?limit=-1&order=sideways&after=%ff",
    "/v1/responses/resp_x/input_items?limit=99999999999999999999",
    "/health?" + "a=1&" * 2000,
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
# Credentials as an attacker might shape them (bytes: as they go on the wire).
TOKENS: list[bytes] = [
    b"",
    b"Bearer",
    b"Bearer ",
    b"Bearer caf\xc3\xa9",
    b"Bearer caf\xe9",
    b"Bearer sk-caf\xc3\xa9",
    b"Basic YTpi",
    b"bearer sk-" + b"A" * 10_000,
    b"Bearer sk-",
    b"Bearer sk-\xf0\x9f\x94\x91",
    b"Bearer \xff\xfe",
    b"sk-x",
    b"Bearer  sk-two  spaces",
    b"Bearer sk-\t",
]
ODD_HEADERS: list[dict[str, bytes]] = [
    {"content-type": b"application/json; charset=utf-999"},
    {"content-type": b"application/json; charset=utf-16"},
    {"content-type": b"multipart/form-data; boundary="},
    {"content-type": b"application/x-www-form-urlencoded"},
    {"content-type": b"\xff\xfe"},
    {"accept": b"text/html;q=\xff, */*;q=abc"},
    {"accept-encoding": b"gzip;q=2, br, \xff"},
    {"cookie": b"sessionid=\xff\xfe; csrftoken=caf\xc3\xa9"},
    {"cookie": b"sessionid=" + b"s" * 5000},
    {"x-llamasite-console": b"playground"},
    {"x-llamasite-console": b"playground", "cookie": b"sessionid=nope; csrftoken=x", "x-csrftoken": b"x"},
    {"x-forwarded-for": b"\xff, 999.1.1.1, ::::"},
    {"x-forwarded-proto": b"https"},
    {"x-forwarded-host": b"evil.example"},
    {"user-agent": b"\xff" * 2000},
    {"anthropic-version": b"\xff"},
    {"origin": b"null"},
    {"origin": b"http://evil.example", "access-control-request-method": b"POST"},
    {"range": b"bytes=-1-2,\xff"},
    {"if-none-match": b"\xff"},
]
BODIES: list[bytes] = [
    b"",
    b"{",
    b"null",
    b"[]",
    b"\xff\xfe{}",
    b'{"model": "\xff"}',
    b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model": "' + SMOLLM2.encode() + b'", "messages": "\xc3\xa9"}',
    b'{"model": 1e999}',
    b'{"model": "../../etc/passwd", "messages": [{"role": "user", "content": "x"}]}',
]


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with console_server(server_factory, "odd", server={"require_api_key": True}) as running:
        yield running


def raw_request(server: DaphneServer, method: str, target: str, headers: dict[str, bytes], body: bytes = b"") -> int:
    """Send one request as bytes (no client library to tidy it) and return the status."""
    address = urlsplit(server.url)
    lines = [f"{method} {target} HTTP/1.1".encode(), f"Host: {address.netloc}".encode(), b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}".encode())
    with socket.create_connection((address.hostname, address.port), timeout=60) as connection:
        connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n" not in answer and (chunk := connection.recv(4096)):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), (method, target, headers, answer[:200])
    return int(status_line.split()[1])


def assert_no_server_error(server: DaphneServer, requests: list[tuple[str, str, dict[str, bytes], bytes]]) -> None:
    failures = []
    for method, target, headers, body in requests:
        status = raw_request(server, method, target, headers, body)
        if status >= 500:
            failures.append((status, method, target, headers, body[:80]))
    assert not failures, failures[:10]
    log = server.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 : log.index("Traceback") + 3000]


def test_every_route_and_method(server: DaphneServer) -> None:
    assert_no_server_error(
        server,
        [
            (method, route, {}, b"{}" if method in ("POST", "PUT", "PATCH") else b"")
            for route in API_ROUTES + PAGE_ROUTES + ODD_PATHS
            for method in METHODS
        ],
    )


def test_every_token_shape_on_every_api_route(server: DaphneServer) -> None:
    assert_no_server_error(
        server,
        [
            (method, route, {header: token}, b"{}" if method == "POST" else b"")
            for route in API_ROUTES
            for token in TOKENS
            for header in ("authorization", "x-api-key")
            for method in ("GET", "POST")
        ],
    )


def test_every_odd_header_and_body(server: DaphneServer) -> None:
    requests = [
        (method, route, headers, body)
        for route in API_ROUTES + PAGE_ROUTES
        for headers in ODD_HEADERS
        for method, body in (("GET", b""), ("POST", b"{}"))
    ]
    requests += [
        ("POST", route, {"content-type": b"application/json"}, body) for route in API_ROUTES for body in BODIES
    ]
    assert_no_server_error(server, requests)


def test_odd_hosts_are_refused(server: DaphneServer) -> None:
    address = urlsplit(server.url)
    for host in (b"", b"evil.example", b"\xff\xfe", b"a" * 300, b"127.0.0.1:notaport", b"[::1", b"caf\xc3\xa9.example"):
        for route in API_ROUTES + PAGE_ROUTES:
            with socket.create_connection((address.hostname, address.port), timeout=60) as connection:
                connection.sendall(
                    b"GET " + route.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
                )
                status_line = connection.recv(4096).split(b"\r\n", 1)[0]
            assert status_line.startswith(b"HTTP/1.1 4"), (host, route, status_line)
    assert "Traceback" not in server.log()


def test_odd_messages_on_the_console_sockets(server: DaphneServer) -> None:
    """The sockets only push: whatever a page sends them is ignored, not a traceback."""
    port = urlsplit(server.url).port
    with staff_client(server) as client:
        for path in ("/ws/dashboard/feed/", "/ws/dashboard/models/", "/ws/dashboard/pulls/"):
            headers = {"Cookie": f"sessionid={client.cookies['sessionid']}", "Origin": server.url}
            with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers) as socket:
                for message in ("{", '{"type": "model.table"}', b"\xff\x00", "x" * 100_000, "null"):
                    socket.send(message)
                socket.ping().wait(timeout=30)  # still open, still answering
    assert "Traceback" not in server.log()


def test_the_server_still_answers(server: DaphneServer) -> None:
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
