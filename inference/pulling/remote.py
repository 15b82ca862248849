"""The server a pull downloads from: GET from an offset (Range, If-Range), redirects followed
one hop at a time so that credentials reach only the server they are for (the URL's own user
and password its own origin, the Hugging Face token Hugging Face), and what its answer's
headers say."""

from __future__ import annotations

import base64
import os
import re

import httpx

from inference.pulling.plan import PullError
from inference.pulling.redaction import redacted

HF_TOKEN_ENV_VAR = "HF_TOKEN"
_HF_HOSTS = ("huggingface.co", "hf.co")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_REDIRECTS = 10
_MEDIA_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}$")
_CONTENT_RANGE = re.compile(r"^bytes (?:(?P<start>\d+)-\d+|\*)/(?P<total>\d+|\*)$")


def token_for(url: httpx.URL) -> str | None:
    """HF_TOKEN, for Hugging Face's own hosts over HTTPS only: a redirect to any other host (or
    a plain-HTTP one) gets no token."""
    host = url.host
    if url.scheme == "https" and any(host == hf or host.endswith("." + hf) for hf in _HF_HOSTS):
        return os.environ.get(HF_TOKEN_ENV_VAR) or None
    return None


def get_from(http: httpx.Client, url: str, offset: int, *, if_range: str | None) -> httpx.Response:
    """GET from `offset` on (only if the file is still the one `if_range` names), following
    redirects ourselves: each hop decides anew which credentials go with it. The URL's own user
    and password go as HTTP basic auth to its own origin (scheme, host and port) only, as curl
    sends them; they are never part of a URL sent, nor of one logged."""
    given = httpx.URL(url)
    basic, origin = _basic_auth(given), _origin(given)
    target = given
    for _ in range(_MAX_REDIRECTS + 1):
        target = target.copy_with(userinfo=b"")
        headers = {"Accept-Encoding": "identity"}  # byte offsets count the file's bytes, not gzip's
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if if_range:
                headers["If-Range"] = if_range
        if basic and _origin(target) == origin:
            headers["Authorization"] = basic
        elif token := token_for(target):
            headers["Authorization"] = f"Bearer {token}"
        response = http.send(http.build_request("GET", target, headers=headers), stream=True)
        if not (response.is_redirect and "location" in response.headers):
            return response
        response.close()
        target = response.url.join(response.headers["location"])  # httpx refused an invalid one already
    raise PullError(f"more than {_MAX_REDIRECTS} redirects, the last to {redacted(target)}")


def _basic_auth(url: httpx.URL) -> str | None:
    if not (url.username or url.password):
        return None
    return "Basic " + base64.b64encode(f"{url.username}:{url.password}".encode()).decode()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def validator(response: httpx.Response) -> str | None:
    """What names this version of the file: a strong ETag, or else Last-Modified."""
    etag = response.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("last-modified")


def content_range(response: httpx.Response) -> tuple[int | None, int | None]:
    """(first byte, file size) from Content-Range; None where it does not say."""
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None:
        return None, None
    start, total = match["start"], match["total"]
    return (int(start) if start else None), (None if total == "*" else int(total))


def content_length(response: httpx.Response) -> int | None:
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


def where(response: httpx.Response) -> str:
    """The server and path that answered (never the query string: it may hold a signature)."""
    return f"{response.url.host}{response.url.path}"


def described(response: httpx.Response) -> str:
    """What answered, in our words: where, the status and the media type (if it reads as one);
    never its body, nor a header as sent."""
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    kind = f", {media_type}" if _MEDIA_TYPE.match(media_type) else ""
    return f"{where(response)} (HTTP {response.status_code}{kind})"


def http_error(response: httpx.Response) -> str:
    where_from = where(response)
    if response.status_code in (401, 403):
        hint = "" if os.environ.get(HF_TOKEN_ENV_VAR) else " (a gated Hugging Face model needs HF_TOKEN)"
        return f"HTTP {response.status_code} from {where_from}: access refused{hint}"
    if response.status_code == 404:
        return f"HTTP 404 from {where_from}: no such file"
    return f"HTTP {response.status_code} from {where_from}"
