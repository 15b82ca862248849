"""Images given by an http(s) URL (`server.fetch_image_urls`), fetched before their conversation
is rendered and checked as images sent as data are (`inference.protocol.images`).

A request's images by URL are fetched together, concurrently, on the event loop (httpx), each
within `server.image_fetch_timeout` seconds in all (redirects included) and at most
`server.max_image_bytes`, counted as the bytes arrive: reading stops beyond it.

Where a fetch may go: the URL the user gave may name any host, this machine's and its network's
included — the operator opted in by turning fetching on, as for a proxy. A redirect is followed
by hand, at most MAX_REDIRECTS, to http or https only, and only to a host whose every address
is public (`address_public`). Its name is resolved here, off the event loop, and the request
goes to the address that was checked, so that a second answer from DNS cannot lead elsewhere.
Nothing is taken from the environment (proxies, .netrc); bodies are asked for uncompressed and
read as sent.

Any failure (DNS, connection, timeout, an HTTP status of 400 or more, too big, a redirect
refused, not an image) is an InvalidRequest naming the part, logged in one line: a 400 in the
request's API's shape.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from inference.config import ServerConfig, get_config
from inference.errors import InvalidRequest
from inference.protocol.images import Image, ImageRefused, image_from_bytes
from inference.protocol.tool_calls import Turn, images_of

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
_HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "llamasite"}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # an IPv4 address in its last 32 bits
# Not public whatever this Python's tables say (3.11's miss them): the IETF's protocol assignments,
# and 6to4 (deprecated; through a relay it reaches any IPv4 address, a private one too).
_NEVER_PUBLIC = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("2002::/16"))


class _Failed(Exception):
    """Why an image could not be fetched, worded for the client."""


def address_public(address: str) -> bool:
    """Whether an IP address is on the public internet: not loopback, private, shared (CGNAT),
    link-local, site-local, multicast, reserved, documentation, 6to4 or unspecified. An IPv4
    address inside an IPv6 one (mapped, NAT64) is judged as itself."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        elif ip.is_site_local:
            return False
    flags = (ip.is_private, ip.is_loopback, ip.is_link_local, ip.is_multicast, ip.is_reserved, ip.is_unspecified)
    return ip.is_global and not any(flags) and not any(ip in network for network in _NEVER_PUBLIC)


async def images_fetched(conversation: tuple[Turn, ...]) -> tuple[Turn, ...]:
    """The conversation with each of its images given by URL fetched and checked; raises
    InvalidRequest for the first that fails (the others are cancelled). A conversation without
    such images is returned as it is."""
    pending = [image for image in images_of(conversation) if image.pending]
    if not pending:
        return conversation
    server = get_config().server
    tls = await asyncio.to_thread(_tls_context)
    timeout = server.image_fetch_timeout
    async with httpx.AsyncClient(verify=tls, timeout=timeout, trust_env=False, headers=_HEADERS) as client:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(_fetched(client, image, server)) for image in pending]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
    fetched = iter([task.result() for task in tasks])

    def with_fetched(turn: Turn) -> Turn:
        if not any(image.pending for image in turn.images):
            return turn
        return replace(turn, images=tuple(next(fetched) if image.pending else image for image in turn.images))

    return tuple(with_fetched(turn) for turn in conversation)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads the CA certificates (~20 ms): once, off the event loop


async def _fetched(client: httpx.AsyncClient, image: Image, server: ServerConfig) -> Image:
    """One image fetched and checked, where the request had it (`at`, `url`)."""
    try:
        async with asyncio.timeout(server.image_fetch_timeout):
            raw = await _body(client, httpx.URL(image.url), server.max_image_bytes)
        checked = await asyncio.to_thread(image_from_bytes, raw)  # its sha256: ~40 ms for 20 MiB
        return replace(checked, at=image.at, url=image.url)
    except (TimeoutError, httpx.TimeoutException):
        reason = f"the image URL gave no image within server.image_fetch_timeout ({server.image_fetch_timeout:g} s)"
    except _Failed as failed:
        reason = str(failed)
    except ImageRefused as refused:
        reason = f"the image URL gave no usable image: {str(refused).rstrip('.')}"
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        reason = f"the image URL cannot be fetched: {type(error).__name__}: {error}"
    logger.info("image at %s not fetched from host %s: %s", image.part, urlsplit(image.url).hostname, reason)
    raise InvalidRequest(f"{reason}: {image.part}", param=image.part)


async def _body(client: httpx.AsyncClient, url: httpx.URL, limit: int) -> bytes:
    """The body the URL leads to, its redirects followed by hand (each target checked first)."""
    target, headers, extensions = url, dict[str, str](), dict[str, Any]()
    for redirects in range(MAX_REDIRECTS + 1):
        if redirects:
            target, headers, extensions = await _pinned(url)
        async with client.stream("GET", target, headers=headers, extensions=extensions) as response:
            if not response.has_redirect_location:
                if response.status_code >= 400:
                    raise _Failed(f"the image URL answered HTTP {response.status_code}")
                return await _read(response, limit)
            url = url.join(response.headers["Location"])
            if url.scheme not in ("http", "https"):
                raise _Failed(
                    f"the image URL redirected to a {url.scheme or 'schemeless'} URL: only http(s) is fetched"
                )
    raise _Failed(f"the image URL redirected more than {MAX_REDIRECTS} times")


async def _pinned(url: httpx.URL) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """A redirect's target as a request to an address its host resolves to, once every address it
    resolves to is public (TLS still checks the host's name)."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise _Failed(f"the image URL redirected to {host}, which does not resolve ({error})") from None
    addresses = [str(info[4][0]) for info in found]
    refused = next((address for address in addresses if not address_public(address)), None)
    if refused is not None:
        at = host if refused == host else f"{host} ({refused})"
        raise _Failed(f"the image URL redirected to {at}, not a public address")
    if not addresses:
        raise _Failed(f"the image URL redirected to {host}, which does not resolve")
    return url.copy_with(host=addresses[0]), {"Host": url.netloc.decode("ascii")}, {"sni_hostname": host}


async def _read(response: httpx.Response, limit: int) -> bytes:
    """The body as sent, refused as soon as it is more than `limit` bytes (or says it will be)."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_big(limit)
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise _too_big(limit)
    return bytes(body)


def _too_big(limit: int) -> _Failed:
    return _Failed(f"the image URL gave more than server.max_image_bytes ({limit} bytes)")
