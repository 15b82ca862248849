"""The server a pull downloads from: GET from an offset (Range, If-Range), redirects followed
one hop at a time so that the Hugging Face token reaches Hugging Face only, and what its
answer's headers say."""

from __future__ import annotations

import os
import re

import httpx

from inference.pulling.plan import PullError

HF_TOKEN_ENV_VAR = "HF_TOKEN"
_HF_HOSTS = ("huggingface.co", "hf.co")
_MAX_REDIRECTS = 10
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
    redirects ourselves: each hop decides anew whether the Hugging Face token goes with it."""
    for _ in range(_MAX_REDIRECTS + 1):
        headers = {"Accept-Encoding": "identity"}  # byte offsets count the file's bytes, not gzip's
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if if_range:
                headers["If-Range"] = if_range
        if token := token_for(httpx.URL(url)):
            headers["Authorization"] = f"Bearer {token}"
        response = http.send(http.build_request("GET", url, headers=headers), stream=True)
        if not (response.is_redirect and "location" in response.headers):
            return response
        response.close()
        url = str(response.url.join(response.headers["location"]))
    raise PullError(f"more than {_MAX_REDIRECTS} redirects from {url}")


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


def http_error(response: httpx.Response) -> str:
    where = f"{response.url.host}{response.url.path}"
    if response.status_code in (401, 403):
        hint = "" if os.environ.get(HF_TOKEN_ENV_VAR) else " (a gated Hugging Face model needs HF_TOKEN)"
        return f"HTTP {response.status_code} from {where}: access refused{hint}"
    if response.status_code == 404:
        return f"HTTP 404 from {where}: no such file"
    return f"HTTP {response.status_code} from {where}"
