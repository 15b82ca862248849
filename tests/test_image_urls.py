"""Images given by an http(s) URL with `server.fetch_image_urls` on: parsed as images to fetch (no
I/O while parsing), fetched concurrently before the model is chosen, within the timeout and
`max_image_bytes`, redirects only to public addresses (resolved and pinned), and checked as data
images are; every failure a 400 in the API's shape naming the part, logged once. With the setting
off, and for any other scheme, a 400 as before. All against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest

from inference.config import load_config, set_config
from inference.errors import InvalidRequest
from inference.protocol import ChatCompletionRequestSerializer
from inference.protocol.tool_calls import Turn
from inference.runtime.pool import model_pool
from inference.serving import image_urls
from inference.serving.image_urls import MAX_REDIRECTS, address_public, images_fetched
from tests.conftest import SMOLLM2, write_config
from tests.gguf_files import write_projector
from tests.test_image_inputs import (
    FETCH_OFF,
    PICTURE,
    anthropic_error,
    chat_image,
    messages_image,
    openai_error,
    png,
    post,
    responses_image,
)

LIMIT = 1024  # max_image_bytes in these tests
TIMEOUT = 0.5  # image_fetch_timeout in these tests, but where a test says otherwise
TEXT_ONLY = f"model {SMOLLM2} takes text only (no multimodal projector)"  # past fetching: the model's turn


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up (too big, timed out) is expected here


# What a path answers: status, body, Content-Type.
ANSWERS = {
    "/cat.png": (200, PICTURE, "image/png"),
    "/big.png": (200, PICTURE + bytes(LIMIT), "image/png"),  # its Content-Length says too big
    "/missing.png": (404, b"not found", "text/plain"),
    "/page.html": (200, b"<!doctype html><p>a page, not a picture</p>", "text/html"),
}


@dataclass
class Pictures:
    """ANSWERS, and /endless.png (no Content-Length, no end), /slow.png (answers when the module's
    tests end), /pair.png (answers once two requests wait for it), /to?url=U (302 to U). Every
    request's Host is kept."""

    release: threading.Event = field(default_factory=threading.Event)
    pair: threading.Barrier = field(default_factory=lambda: threading.Barrier(2, timeout=5))
    hosts: list[str] = field(default_factory=list)
    server: _QuietServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Pictures:
        pictures = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def answer(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                pictures.hosts.append(self.headers["Host"])
                path, _, query = self.path.partition("?")
                if path in ANSWERS:
                    self.answer(*ANSWERS[path])
                elif path == "/endless.png":
                    self.send_response(200)
                    self.end_headers()  # HTTP/1.0 without Content-Length: the body ends with the connection
                    self.wfile.write(PICTURE)
                    while True:  # until the client hangs up (a BrokenPipeError ends the handler)
                        self.wfile.write(bytes(4096))
                elif path == "/slow.png":
                    pictures.release.wait(10)
                    self.answer(200, PICTURE, "image/png")
                elif path == "/pair.png":
                    pictures.pair.wait()  # both asked for at once, else no answer after 5 s
                    self.answer(200, png(5, 4), "image/png")
                else:  # /to
                    self.answer(302, b"", "text/plain", Location=parse_qs(query)["url"][0])

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), name="pictures", daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pictures() -> Iterator[Pictures]:
    pictures = Pictures().start()
    yield pictures
    pictures.stop()


Fetching = Callable[..., None]
Resolving = Callable[..., list[str]]


@pytest.fixture
def fetching(tmp_path: Path) -> Iterator[Fetching]:
    """Put a config with fetch_image_urls on in force (server keys as keywords), for the
    serving function tested without a request."""

    def install(**server: Any) -> None:
        settings = {"fetch_image_urls": True, "max_image_bytes": LIMIT, "image_fetch_timeout": TIMEOUT, **server}
        set_config(load_config(write_config(tmp_path, settings)))

    install()
    yield install
    set_config(None)


@pytest.fixture
def fetching_api(use_config: Callable[..., Path]) -> None:
    use_config({"fetch_image_urls": True, "max_image_bytes": LIMIT, "image_fetch_timeout": TIMEOUT})


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, every time."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def conversation(*urls: str) -> tuple[Turn, ...]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "Look"}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return ChatCompletionRequestSerializer.parse({"messages": [{"role": "user", "content": content}]}).conversation


def to(url: str) -> str:
    """The path of a redirect to `url`."""
    return f"/to?url={quote(url, safe='')}"


# --- which addresses are public ---------------------------------------------------------------------

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888"]
PUBLIC += ["::ffff:8.8.8.8", "64:ff9b::808:808"]  # IPv4 inside IPv6 (mapped, NAT64): judged as itself
NOT_PUBLIC = [
    *("127.0.0.1", "127.255.255.254", "0.0.0.0", "255.255.255.255"),  # loopback, unspecified, broadcast
    *("10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1"),  # private, shared (CGNAT)
    *("169.254.169.254", "169.254.0.1"),  # link-local: the clouds' metadata service
    *("224.0.0.1", "239.255.255.250", "240.0.0.1"),  # multicast, reserved
    *("192.0.2.1", "198.51.100.7", "203.0.113.9", "198.18.0.1", "192.0.0.8"),  # documentation, benchmarks
    *("::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "fec0::1"),  # IPv6 local
    *("ff02::1", "ff0e::1", "2001:db8::1", "100::1", "2001::1"),  # multicast, documentation, discard, Teredo
    *("::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1"),  # IPv4 mapped, compatible
    *("64:ff9b::7f00:1", "64:ff9b::a00:1", "2002:7f00:1::", "2002:808:808::1"),  # NAT64 of private ones, 6to4
    *("localhost", "example.com", "", "1.2.3", "::g"),  # not addresses
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_public(address: str) -> None:
    assert address_public(address)


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_local_private_and_special_addresses_are_not(address: str) -> None:
    assert not address_public(address)


# --- parsing: no I/O --------------------------------------------------------------------------------


def test_with_fetching_on_an_http_url_is_an_image_to_fetch_in_its_place(fetching: Fetching) -> None:
    (turn,) = conversation("https://example.com/cat.png", "http://127.0.0.1:9/x.png")
    first, second = turn.images
    assert first.pending and first.url == "https://example.com/cat.png" and first.data == b""
    assert (first.part, second.part, second.url) == (
        "messages[0].content[1]",
        "messages[0].content[2]",
        "http://127.0.0.1:9/x.png",
    )


@pytest.mark.parametrize("url", ["http:///cat.png", "https://[::1/cat.png", "http://:80/cat.png"])
async def test_an_http_url_without_a_host_is_refused_as_it_is_read(fetching_api: None, url: str) -> None:
    openai_error(await post("/v1/chat/completions", chat_image(url)), "messages[0].content[1]", "needs a valid host")


async def test_with_fetching_off_an_http_url_is_refused_as_before(
    use_config: Callable[..., Path], pictures: Pictures
) -> None:
    use_config({"fetch_image_urls": False})
    url = pictures.url("/cat.png")
    problem = "server.fetch_image_urls is off"
    openai_error(await post("/v1/chat/completions", chat_image(url)), "messages[0].content[1]", problem)
    source = {"type": "url", "url": url}
    anthropic_error(await post("/v1/messages", messages_image(source)), "messages[0].content[1]", problem)
    openai_error(await post("/v1/responses", responses_image(url)), "input[0].content[1]", problem)
    assert pictures.hosts == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/cat.png", "gopher://127.0.0.1/"])
async def test_other_schemes_are_refused_with_fetching_on(fetching_api: None, url: str) -> None:
    problem = f"not a {url.split(':')[0]}: URL"
    openai_error(await post("/v1/chat/completions", chat_image(url)), "messages[0].content[1]", problem)
    source = {"type": "url", "url": url}
    anthropic_error(await post("/v1/messages", messages_image(source)), "messages[0].content[1]", problem)
    openai_error(await post("/v1/responses", responses_image(url)), "input[0].content[1]", problem)


# --- fetching ---------------------------------------------------------------------------------------


async def test_a_fetched_image_is_checked_and_takes_the_placeholders_place(
    fetching: Fetching, pictures: Pictures
) -> None:
    before = conversation(pictures.url("/cat.png"))
    (turn,) = await images_fetched(before)
    (image,) = turn.images
    assert not image.pending and image.data == PICTURE and (image.width, image.height) == (3, 2)
    assert (image.media_type, image.sha256) == ("image/png", hashlib.sha256(PICTURE).hexdigest())
    assert (image.part, image.url, turn.content) == (
        "messages[0].content[1]",
        pictures.url("/cat.png"),
        before[0].content,
    )


async def test_a_conversation_without_urls_is_returned_as_it_is(fetching: Fetching) -> None:
    plain = (Turn("user", "Hi"),)
    assert await images_fetched(plain) is plain


async def test_the_images_of_a_conversation_are_fetched_concurrently(fetching: Fetching, pictures: Pictures) -> None:
    fetching(image_fetch_timeout=8)  # /pair.png answers only once both requests wait on it
    (turn,) = await images_fetched(conversation(pictures.url("/pair.png"), pictures.url("/pair.png?2")))
    assert [(image.width, image.height) for image in turn.images] == [(5, 4), (5, 4)]


async def test_each_api_fetches_and_then_reaches_the_models_own_check(fetching_api: None, pictures: Pictures) -> None:
    url = pictures.url("/cat.png")
    openai_error(await post("/v1/chat/completions", chat_image(url)), "messages[0].content[1]", TEXT_ONLY)
    source = {"type": "url", "url": url}
    anthropic_error(await post("/v1/messages", messages_image(source)), "messages[0].content[1]", TEXT_ONLY)
    counted = await post("/v1/messages/count_tokens", messages_image(source))
    anthropic_error(counted, "messages[0].content[1]", TEXT_ONLY)
    openai_error(await post("/v1/responses", responses_image(url)), "input[0].content[1]", TEXT_ONLY)
    assert model_pool().worker(SMOLLM2) is None


FAILURES = [
    ("404", "/missing.png", "the image URL answered HTTP 404"),
    ("not-an-image", "/page.html", "no usable image: The image is not PNG, JPEG, GIF, WebP or BMP"),
    ("too-big", "/big.png", f"more than server.max_image_bytes ({LIMIT} bytes)"),
    ("too-big-unannounced", "/endless.png", f"more than server.max_image_bytes ({LIMIT} bytes)"),
    ("slow", "/slow.png", f"no image within server.image_fetch_timeout ({TIMEOUT:g} s)"),
    ("redirect-loopback", to("http://127.0.0.1:9/cat.png"), "redirected to 127.0.0.1, not a public address"),
    ("redirect-private", to("http://10.0.0.1/cat.png"), "redirected to 10.0.0.1, not a public address"),
    ("redirect-relative", to("/cat.png"), "redirected to 127.0.0.1, not a public address"),
    ("redirect-ipv6", to("http://[::1]/cat.png"), "redirected to ::1, not a public address"),
    ("redirect-file", to("file:///etc/passwd"), "redirected to a file URL: only http(s) is fetched"),
]


@pytest.mark.parametrize(("path", "problem"), [case[1:] for case in FAILURES], ids=[case[0] for case in FAILURES])
async def test_each_failure_is_a_400_naming_the_part_and_one_log_line(
    fetching_api: None, pictures: Pictures, caplog: pytest.LogCaptureFixture, path: str, problem: str
) -> None:
    caplog.set_level(logging.INFO, logger="inference.serving.image_urls")
    body = chat_image(pictures.url(path))
    body["messages"][0]["content"].insert(1, {"type": "image_url", "image_url": {"url": pictures.url("/cat.png")}})
    openai_error(await post("/v1/chat/completions", body), "messages[0].content[2]", problem)
    (line,) = [record.getMessage() for record in caplog.records if record.name == "inference.serving.image_urls"]
    assert "messages[0].content[2]" in line and "host 127.0.0.1" in line and problem in line


async def test_a_refused_connection_is_a_400(fetching_api: None, closed_port: int) -> None:
    response = await post("/v1/chat/completions", chat_image(f"http://127.0.0.1:{closed_port}/cat.png"))
    openai_error(response, "messages[0].content[1]", "the image URL cannot be fetched: ConnectError")


async def test_a_failure_is_in_each_apis_shape(fetching_api: None, pictures: Pictures) -> None:
    url, problem = pictures.url("/missing.png"), "answered HTTP 404"
    source = {"type": "url", "url": url}
    anthropic_error(await post("/v1/messages", messages_image(source)), "messages[0].content[1]", problem)
    openai_error(await post("/v1/responses", responses_image(url)), "input[0].content[1]", problem)


async def test_the_first_failure_ends_the_fetching_of_the_others(fetching: Fetching, pictures: Pictures) -> None:
    fetching(image_fetch_timeout=8)
    started = asyncio.get_running_loop().time()
    with pytest.raises(InvalidRequest) as failed:
        await images_fetched(conversation(pictures.url("/slow.png"), pictures.url("/missing.png")))
    assert (failed.value.param, failed.value.status) == ("messages[0].content[2]", 400)
    assert asyncio.get_running_loop().time() - started < 8  # the slow one was not waited for


# --- redirects: resolved here, to public addresses only, and pinned ---------------------------------


@pytest.fixture
def resolving(monkeypatch: pytest.MonkeyPatch) -> Resolving:
    """Answer the event loop's name lookups with the given addresses (a fake DNS; none: the name
    does not resolve); returns the names looked up."""
    asked: list[str] = []

    def install(*addresses: str) -> list[str]:
        async def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
            asked.append(host)
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses
            ]

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        return asked

    return install


async def test_a_redirect_goes_to_the_address_checked_with_its_name_as_host(
    fetching: Fetching, pictures: Pictures, resolving: Resolving, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_urls, "address_public", lambda address: address == "127.0.0.1")  # as if public
    asked = resolving("127.0.0.1")
    target = f"http://pictures.test:{pictures.port}/cat.png"
    pictures.hosts.clear()
    (turn,) = await images_fetched(conversation(pictures.url(to(target))))
    assert turn.images[0].data == PICTURE
    assert asked == ["pictures.test"] and pictures.hosts == [
        f"127.0.0.1:{pictures.port}",
        f"pictures.test:{pictures.port}",
    ]


async def test_a_name_with_any_address_not_public_is_refused_before_connecting(
    fetching: Fetching, pictures: Pictures, resolving: Resolving
) -> None:
    resolving("93.184.216.34", "127.0.0.1")  # one public address is not enough
    with pytest.raises(InvalidRequest, match=r"redirected to pictures.test \(127.0.0.1\), not a public address"):
        await images_fetched(conversation(pictures.url(to("https://pictures.test/cat.png"))))


async def test_more_redirects_than_allowed_are_refused(
    fetching: Fetching, pictures: Pictures, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_urls, "address_public", lambda address: True)
    chain = pictures.url("/cat.png")
    for _ in range(MAX_REDIRECTS):
        chain = pictures.url(to(chain))
    (turn,) = await images_fetched(conversation(chain))  # MAX_REDIRECTS of them: followed
    assert turn.images[0].data == PICTURE
    with pytest.raises(InvalidRequest, match=f"redirected more than {MAX_REDIRECTS} times"):
        await images_fetched(conversation(pictures.url(to(chain))))


async def test_a_redirect_to_a_name_that_does_not_resolve_is_refused(
    fetching: Fetching, pictures: Pictures, resolving: Resolving
) -> None:
    resolving()
    with pytest.raises(InvalidRequest, match="redirected to nowhere.test, which does not resolve"):
        await images_fetched(conversation(pictures.url(to("http://nowhere.test/cat.png"))))


async def test_a_stored_response_with_a_fetched_image_continued_after_fetching_is_off_is_a_400(
    use_config: Callable[..., Path], models_dir: Path, pictures: Pictures
) -> None:
    write_projector(models_dir / f"mmproj-{SMOLLM2}.gguf")
    use_config({"fetch_image_urls": True, "max_image_bytes": LIMIT, "image_fetch_timeout": TIMEOUT})
    stored = await post("/v1/responses", responses_image(pictures.url("/cat.png")) | {"store": True})
    assert stored.status_code == 200, stored.content
    use_config()  # fetching turned off: the stored conversation's URL can no longer be fetched
    continued = await post("/v1/responses", {"previous_response_id": stored.json()["id"], "input": "And?"})
    openai_error(continued, "input[0].content[1]", FETCH_OFF)
