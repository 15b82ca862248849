"""An OpenAI streaming client that times what users feel: time to first token, token rate."""

from __future__ import annotations

import asyncio
import http.client
import json
import multiprocessing
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any
from urllib.parse import urlsplit

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
MAX_TOKENS = 128


@dataclass(frozen=True)
class Stream:
    ttft_s: float | None  # None: not a single token arrived
    tokens: int
    decode_tokens_per_s: float  # after the first token
    total_s: float
    completion_id: str
    usage_chunk: dict[str, Any] | None = None  # the chunk with usage, decoded (llama.cpp's server adds `timings`)


async def stream_chat(
    url: str,
    model: str,
    max_tokens: int = MAX_TOKENS,
    prompt: str = PROMPT,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> Stream:
    """One streamed chat completion at temperature 0; tokens counted as content chunks;
    `options` adds to the request's body (`stream_options` to have the usage chunk).

    The client does as little as it can per token, because it shares the machine's cores with
    the server: a plain socket (no HTTP library, `Connection: close`), the raw bytes split into
    SSE events, no JSON decoding. A stream the server cuts off (llama-cpp-python's server does,
    when another request arrives) counts the tokens delivered until then.
    """
    address = urlsplit(url)
    body = json.dumps(
        {
            "model": model,
            "messages": messages or [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            **({"tools": tools} if tools else {}),
            **(options or {}),
        }
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    first = last = None
    tokens, buffer, completion_id, status_seen, usage = 0, b"", "", False, b""
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(request)
        while data := await reader.read(65536):
            buffer += data
            if not status_seen:
                if len(buffer) < 12:
                    continue
                if not buffer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    raise RuntimeError(f"{url}: {buffer[:600]!r}")  # the status line, headers and the error
                status_seen = True
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not completion_id and (match := _ID.search(event)):
                    completion_id = match[1].decode()
                if _has_content(event):
                    tokens += 1
                    last = time.perf_counter()
                    first = first or last
                if b'"prompt_tokens"' in event:
                    usage = event
    except ConnectionError:
        pass  # cut off: what arrived counts
    finally:
        writer.close()
    rate = (tokens - 1) / (last - first) if first and last and tokens > 1 and last > first else 0.0
    ttft = None if first is None else first - started
    usage_chunk = json.loads(usage.split(b"data:", 1)[1]) if usage else None
    return Stream(ttft, tokens, rate, time.perf_counter() - started, completion_id, usage_chunk)


_ID = re.compile(rb'"id": ?"([^"]+)"')


def _has_content(event: bytes) -> bool:
    """Whether an SSE chunk carries generated text (a non-empty delta.content), in any spacing."""
    at = event.find(b'"content"')
    if at < 0:
        return False
    value = event[at + 9 :].lstrip(b": ")
    return value.startswith(b'"') and not value.startswith(b'""')


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


HISTORY = (
    "Here are my notes from the meeting about the harbour renovation. The old pier will be "
    "closed from March to June while the pilings are replaced, and the ferry will use the "
    "north jetty. The fish market moves to the car park for those months. The council wants "
    "comments on the lighting plan, the new benches and the width of the cycle lane by the "
    "end of February, and the contractor asked whether work may start at six in the morning. "
)


def conversation(run: int, follow_up: bool) -> list[dict[str, str]]:
    """A conversation with a history of about 1,000 tokens, new in each run; with `follow_up`,
    its next turn (the history, an answer, a new question)."""
    messages = [{"role": "user", "content": f"Meeting {run}. " + HISTORY * 12 + "What are the dates?"}]
    if follow_up:
        messages += [
            {"role": "assistant", "content": "The pier is closed from March to June."},
            {"role": "user", "content": "And when are comments due?"},
        ]
    return messages


def fresh_prompt(run: int) -> str:
    """A prompt no earlier request began with, so its time to first token includes processing it."""
    return f"Request {run}. {PROMPT}"


@dataclass
class Concurrent:
    """Streams of clients running at once, their wall time, and /health latencies meanwhile."""

    streams: list[Stream]
    elapsed_s: float
    health_s: list[float]

    def __add__(self, other: Concurrent) -> Concurrent:
        return Concurrent(
            self.streams + other.streams, self.elapsed_s + other.elapsed_s, self.health_s + other.health_s
        )

    def figures(self) -> dict[str, float]:
        tokens = sum(s.tokens for s in self.streams)
        ttfts = [s.ttft_s * 1000 for s in self.streams if s.ttft_s is not None] or [float("nan")]
        figures = {
            "aggregate_tokens_per_s": tokens / self.elapsed_s,
            "ttft_ms_p50": percentile(ttfts, 0.5),
            "ttft_ms_p99": percentile(ttfts, 0.99),
            "delivered_fraction": tokens / (len(self.streams) * MAX_TOKENS),
        }
        if self.health_s:
            figures["health_ms_p50"] = percentile(self.health_s, 0.5) * 1000
            figures["health_ms_p99"] = percentile(self.health_s, 0.99) * 1000
        return figures


async def concurrent_streams(url: str, model: str, clients: int, requests: int, health_path: str | None) -> Concurrent:
    """`clients` clients each streaming `requests` completions in turn; `health_path` polled
    meanwhile (`health_polled`)."""

    async def client_loop() -> list[Stream]:
        return [await stream_chat(url, model) for _ in range(requests)]

    with health_polled(url, health_path) as health:
        started = time.perf_counter()
        streams = [s for batch in await asyncio.gather(*(client_loop() for _ in range(clients))) for s in batch]
        elapsed = time.perf_counter() - started
    return Concurrent(streams, elapsed, health)


@contextmanager
def health_polled(url: str, path: str | None) -> Iterator[list[float]]:
    """The latencies of `path` (none where None), polled while inside by a process of its own, so
    that what the streaming clients' loop does per chunk is not counted in the server's latency;
    filled in on leaving, and the poller is stopped however the block ends."""
    latencies: list[float] = []
    if path is None:
        yield latencies
        return
    context = multiprocessing.get_context("fork")  # starts at once; the child only polls
    stop, (results, sent) = context.Event(), context.Pipe(duplex=False)
    poller = context.Process(target=poll_health, args=(url, path, stop, sent), daemon=True)
    poller.start()
    sent.close()  # the child's end: recv raises EOFError if the child dies before sending
    try:
        yield latencies
    finally:
        stop.set()
        latencies.extend(results.recv())
        poller.join()


def poll_health(url: str, path: str, stop: Event, results: Connection) -> None:
    """GET `path` every 50 ms on one kept-alive connection until `stop`; send the latencies."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    latencies: list[float] = []
    while not stop.is_set():
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
        latencies.append(time.perf_counter() - started)
        stop.wait(0.05)
    results.send(latencies)
