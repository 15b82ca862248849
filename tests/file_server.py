"""A local HTTP server for the pull tests: serves one file with Range support, and on request
cuts the connection half-way, ignores Range, leaves out Content-Length, drips the bytes slowly,
serves half the file as if whole, a non-GGUF body, Prometheus metrics or broken chunked
encoding, or redirects elsewhere; every request's path and headers are kept for the tests to
inspect."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d+)-$")
NOT_GGUF = b"<!doctype html><html><body>This is a web page, not a model.</body></html>\n" * 100
METRICS = b"# HELP secret_requests_total Requests.\n# TYPE secret_requests_total counter\nsecret_requests_total 7\n"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up mid-body (a cancelled pull) is expected here


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class FileServer:
    """Routes: /ok/NAME.gguf, /cut-once/NAME.gguf (the first answer stops half-way),
    /no-range/NAME.gguf, /no-length/NAME.gguf (no Content-Length: the body ends with the
    connection), /slow/NAME.gguf (0.2 s per 256 kB), /half/NAME.gguf (the file's first half, as
    if it were all), /not-gguf/NAME.gguf, /metrics, /bad-chunks/NAME.gguf, /redirect/<port>/<path>.
    Routes combine with "+": /no-length+cut-once/NAME.gguf."""

    source: Path
    seen: list[Seen] = field(default_factory=list)
    cut_done: bool = False
    etag: str = '"v1"'  # the file's version; a test changes it to play a file replaced meanwhile
    server: _QuietServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FileServer:
        files = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                files.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = self.path.split("/")[1]
                if route == "redirect":
                    _, _, port, rest = self.path.split("/", 3)
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{port}/{rest}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route == "bad-chunks":
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + METRICS.replace(b"\n", b"\r\n")
                    )
                    return
                modes = set(route.split("+"))
                files.answer(self, modes, *files.body(modes))

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        # Polled often: stop() waits for the loop to notice, half a second per test at the default.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def body(self, modes: set[str]) -> tuple[bytes, str]:
        """The body a route serves, and its content type."""
        if "not-gguf" in modes:
            return NOT_GGUF, "text/html"
        if "metrics" in modes:
            return METRICS, "text/plain; version=0.0.4; charset=utf-8"
        whole = self.source.read_bytes()
        return (whole[: len(whole) // 2] if "half" in modes else whole), "application/octet-stream"

    def answer(self, handler: BaseHTTPRequestHandler, modes: set[str], body: bytes, content_type: str) -> None:
        match = _RANGE.match(handler.headers.get("Range", ""))
        same_version = handler.headers.get("If-Range", self.etag) == self.etag
        start = int(match[1]) if match and "no-range" not in modes and same_version else 0
        if start >= len(body) > 0:
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(body)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(206 if start else 200)
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if "no-length" not in modes:
            handler.send_header("Content-Length", str(len(body) - start))
        handler.send_header("ETag", self.etag)
        handler.send_header("Content-Type", content_type)
        handler.end_headers()
        if "cut-once" in modes and not self.cut_done:
            self.cut_done = True
            handler.wfile.write(body[start : len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        step = 256 * 1024
        for offset in range(start, len(body), step):
            handler.wfile.write(body[offset : offset + step])
            if "slow" in modes:
                time.sleep(0.2)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def serving(path: Path) -> Iterator[FileServer]:
    """A FileServer of `path`, started, stopped afterwards."""
    server = FileServer(path).start()
    try:
        yield server
    finally:
        server.stop()
