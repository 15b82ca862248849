"""Benchmark: what Ollama's /api/chat costs against /v1/chat/completions on the same server.

Starts this server on the bundled SmolLM2 and sends the same conversation, greedy, the same
number of tokens (`num_predict` / `max_tokens`), to both APIs in turn (every other round in
reverse order, so the machine's drift hits both alike): N requests not streamed (the latency of
the whole answer) and N streamed (time to the first piece of text, and to the end). Prints the
medians and the best of each, the ratio /api/chat ÷ /v1/chat/completions, and whether both said
the same text. On a shared machine the model's decoding speed varies more than the APIs differ,
so it also times what only the APIs do differently, in this process: writing a streamed answer
of many tokens (a generation made by hand) as Ollama's NDJSON lines and as OpenAI's SSE chunks.

    .venv/bin/python -m bench.ollama [--runs 20] [--tokens 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.__main__ import log_to_console, report
from bench.client import PROMPT
from bench.servers import llamasite
from inference.management.commands.install_default_model import bundled_default_model

logger = logging.getLogger("bench.ollama")
SETTINGS = {"n_ctx": 4096, "parallel": 4}
OPENAI, OLLAMA = "/v1/chat/completions", "/api/chat"


@dataclass(frozen=True)
class Api:
    """How to ask one API for a chat, and read its text."""

    path: str
    body: Callable[[str, int, bool], dict[str, Any]]
    text: Callable[[dict[str, Any]], str]  # of a whole answer
    piece: Callable[[str], str]  # the text of one streamed line ("" for none)


def _sse_piece(line: str) -> str:
    if not line.startswith("data: {"):
        return ""
    choices = json.loads(line[6:])["choices"]
    return (choices[0]["delta"].get("content") or "") if choices else ""


APIS = {
    OPENAI: Api(
        OPENAI,
        lambda model, tokens, stream: {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens,
            "temperature": 0,
            "stream": stream,
        },
        lambda answer: answer["choices"][0]["message"]["content"],
        _sse_piece,
    ),
    OLLAMA: Api(
        OLLAMA,
        lambda model, tokens, stream: {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "options": {"num_predict": tokens, "temperature": 0},
            "stream": stream,
        },
        lambda answer: answer["message"]["content"],
        lambda line: json.loads(line)["message"]["content"] if line.strip() else "",
    ),
}


@dataclass(frozen=True)
class Timed:
    total_s: float
    first_s: float | None  # streamed: the first piece of text
    text: str


def whole(http: httpx.Client, url: str, model: str, api: Api, tokens: int) -> Timed:
    started = time.perf_counter()
    response = http.post(f"{url}{api.path}", json=api.body(model, tokens, False))
    response.raise_for_status()
    return Timed(time.perf_counter() - started, None, api.text(response.json()))


def streamed(http: httpx.Client, url: str, model: str, api: Api, tokens: int) -> Timed:
    started = time.perf_counter()
    first, texts = None, []
    with http.stream("POST", f"{url}{api.path}", json=api.body(model, tokens, True)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if text := api.piece(line):
                first = first or time.perf_counter()
                texts.append(text)
    return Timed(time.perf_counter() - started, None if first is None else first - started, "".join(texts))


def framing_us_per_token(tokens: int = 2000, runs: int = 15) -> dict[str, float]:
    """Microseconds per token of writing a streamed answer in each API's shape (the median of
    `runs`), from a generation made by hand: what each API's answer costs the event loop."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llamasite.settings")
    import django

    django.setup()
    from inference.protocol import ChatCompletionRequestSerializer
    from inference.protocol.ollama import OllamaChatRequestSerializer
    from inference.runtime.jobs import Finished, Generation, TextDelta
    from inference.serving.chat import StartedChat, chat_completion_chunks
    from inference.serving.ollama import OllamaStarted, ollama_answer_lines
    from inference.serving.prompts import PLAIN_READING

    messages = [{"role": "user", "content": PROMPT}]
    openai = ChatCompletionRequestSerializer.parse({"model": "m", "messages": messages, "stream": True})
    ollama = OllamaChatRequestSerializer.parse({"model": "m", "messages": messages})

    def generation() -> Generation:
        async def events() -> Any:
            for number in range(1, tokens + 1):
                yield TextDelta(" word", number)
            yield Finished("length", 30, tokens)

        stream: Any = events()
        return Generation(model="m", prompt_tokens=30, events=stream)

    writers = {
        OPENAI: lambda: chat_completion_chunks(StartedChat(generation(), PLAIN_READING), openai),
        OLLAMA: lambda: ollama_answer_lines(OllamaStarted(StartedChat(generation(), PLAIN_READING), 0.0), ollama),
    }

    async def written(lines: Any) -> float:
        started = time.perf_counter()
        async for _ in lines:
            pass
        return time.perf_counter() - started

    return {
        path: statistics.median(asyncio.run(written(write())) for _ in range(runs)) / tokens * 1e6
        for path, write in writers.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, help="a markdown file to append the table to")
    options = parser.parse_args()
    log_to_console()
    timings: dict[tuple[str, str], list[Timed]] = {(path, kind): [] for path in APIS for kind in ("whole", "stream")}
    with llamasite(bundled_default_model(), SETTINGS) as server, httpx.Client(timeout=300) as http:
        for api in APIS.values():  # warm-up: the load, the prompt's cache, the connection
            whole(http, server.url, server.model, api, options.tokens)
        for run in range(options.runs):
            order = list(APIS.values()) if run % 2 == 0 else list(reversed(APIS.values()))
            for api in order:
                timings[api.path, "whole"].append(whole(http, server.url, server.model, api, options.tokens))
                timings[api.path, "stream"].append(streamed(http, server.url, server.model, api, options.tokens))

    def ms(path: str, kind: str, figure: Callable[[Timed], float | None], best: bool) -> float:
        values = [value for timed in timings[path, kind] if (value := figure(timed)) is not None]
        return (min(values) if best else statistics.median(values)) * 1000

    rows = [
        ("not streamed: the whole answer", "whole", lambda timed: timed.total_s),
        ("streamed: the first text", "stream", lambda timed: timed.first_s),
        ("streamed: the whole answer", "stream", lambda timed: timed.total_s),
    ]
    same = all(timings[OPENAI, kind][0].text == timings[OLLAMA, kind][0].text for kind in ("whole", "stream"))
    lines = [
        f"### /api/chat against /v1/chat/completions ({time.strftime('%Y-%m-%d %H:%M')}, {options.runs} requests "
        f"each, {options.tokens} tokens, greedy)",
        "",
        f"| figure | {OPENAI} | {OLLAMA} | ratio |",
        "|---|---|---|---|",
    ]
    for label, kind, figure in rows:
        for best in (False, True):
            openai, ollama = ms(OPENAI, kind, figure, best), ms(OLLAMA, kind, figure, best)
            name = f"{label}, {'best' if best else 'median'}"
            lines.append(f"| {name} | {openai:.1f} ms | {ollama:.1f} ms | {ollama / openai:.3f}× |")
    framing = framing_us_per_token()
    lines.append(
        f"| writing a streamed answer, per token (in-process, median) | {framing[OPENAI]:.1f} µs | "
        f"{framing[OLLAMA]:.1f} µs | {framing[OLLAMA] / framing[OPENAI]:.3f}× |"
    )
    lines += ["", f"The same text from both: {'yes' if same else 'NO'}."]
    report(lines, options.out)


if __name__ == "__main__":
    main()
