"""Other llamasite servers (config `server.peers`) that serve the models this one does not have.

A request for such a model is passed to the first peer that has it and answered as that peer
answers — streamed chunk by chunk, and hung up on when the client hangs up — so one address
(or any server behind one nginx upstream) reaches every model. The peer records the request;
this server only relays it. Forwarded requests are marked, and a peer never forwards them again.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx
from django.http import HttpRequest, StreamingHttpResponse

from inference.config import get_config
from inference.protocol.errors import ERROR_CODE_HEADER

logger = logging.getLogger(__name__)

FORWARDED_BY = "X-Llamasite-Forwarded-By"
_PASSED_ON = (
    "Authorization",
    "X-Api-Key",
    "Anthropic-Version",
    "Anthropic-Beta",
    "Content-Type",
    "Accept",
    "User-Agent",
)
_RELAYED_BACK = ("Cache-Control", "X-Accel-Buffering", "Retry-After")
# Connecting and sending are quick on a LAN; an answer may stream for as long as it generates.
_TIMEOUT = httpx.Timeout(10.0, read=None)
_LIST_TIMEOUT = 3.0


# One client (its connections and its TLS context, which costs ~20 ms to build) per event loop:
# daphne runs one; tests run several.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    if loop not in _clients:
        _clients[loop] = httpx.AsyncClient(timeout=_TIMEOUT)
    return _clients[loop]


def forwarding(request: HttpRequest) -> bool:
    """Whether a request this server cannot serve may go to a peer (not one a peer sent)."""
    return bool(get_config().server.peers) and FORWARDED_BY not in request.headers


def _headers(request: HttpRequest) -> dict[str, str]:
    headers = {name: value for name in _PASSED_ON if (value := request.headers.get(name))}
    headers[FORWARDED_BY] = get_config().server.instance
    headers["Accept-Encoding"] = "identity"  # relayed byte for byte
    return headers


async def forward(request: HttpRequest) -> StreamingHttpResponse | None:
    """The answer of the first peer that has the request's model, or None if none has it."""
    client, headers = _client(), _headers(request)
    for peer in get_config().server.peers:
        try:
            upstream = await client.send(
                client.build_request(
                    request.method, f"{peer}{request.get_full_path()}", content=request.body, headers=headers
                ),
                stream=True,
            )
        except httpx.HTTPError as exc:
            logger.warning("peer %s did not answer %s: %s", peer, request.path, exc)
            continue
        if upstream.status_code == 404 and await _model_not_found(upstream):
            await upstream.aclose()
            continue
        logger.info("%s %s: the model is served by peer %s", request.method, request.path, peer)
        return _relayed(upstream)
    return None


async def _model_not_found(upstream: httpx.Response) -> bool:
    """Whether a peer's 404 says it lacks the model: by our error code header (whatever API the
    body speaks), or, from a peer without it, by the OpenAI error's code."""
    if upstream.headers.get(ERROR_CODE_HEADER) == "model_not_found":
        return True
    await upstream.aread()
    try:
        error = upstream.json().get("error")
    except (ValueError, AttributeError):  # not an OpenAI error: some other 404
        return False
    return isinstance(error, dict) and error.get("code") == "model_not_found"


def _relayed(upstream: httpx.Response) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:  # also when the client hung up: the peer then stops generating
            await upstream.aclose()

    response = StreamingHttpResponse(
        body(), status=upstream.status_code, content_type=upstream.headers.get("Content-Type")
    )
    for name in _RELAYED_BACK:
        if name in upstream.headers:
            response[name] = upstream.headers[name]
    return response


async def models_elsewhere(request: HttpRequest, listed: set[str]) -> list[dict[str, Any]]:
    """The models the peers list (to the same key) that are not `listed` already, in peer
    order; a silent peer lists none."""
    client, headers, peers = _client(), _headers(request), get_config().server.peers
    answers = await asyncio.gather(
        *(client.get(f"{peer}/v1/models", headers=headers, timeout=_LIST_TIMEOUT) for peer in peers),
        return_exceptions=True,
    )
    models, seen = [], set(listed)
    for peer, answer in zip(peers, answers):
        if not isinstance(answer, httpx.Response) or answer.status_code != 200:
            logger.warning("peer %s did not list its models: %s", peer, answer)
            continue
        for model in answer.json().get("data", []):
            if model.get("id") not in seen:
                seen.add(model.get("id"))
                models.append(model)
    return models
