"""Benchmark: an image in a conversation — the first prompt with it, then a follow-up question
about it — on this server and, given its binary, llama.cpp's server (`--mmproj`).

Both run the bundled SmolLM2 with the tests' tiny random-weight projector
(`tests.gguf_files.write_projector`, written to a scratch folder as `mmproj-NAME.gguf`: ours finds
it beside the model, llama.cpp's is given `--mmproj`; 32×32 images, so 16 tokens an image), n_ctx
4096, 4 slots. Each round sends a new image (random pixels seeded by the round, a PNG as an
`image_url` data URL) in three requests, one after the other:
  (a) first: a user message with the image, then ~500 tokens of notes and a question;
  (b) follow-up: that message, a fixed answer and a new question — everything up to the answer
      is a prefix the server has just processed, image included, and should find in its cache;
  (c) baseline: (a)'s text without the image (the round's number first, so it is new): what
      the image adds to (a).
All streamed, temperature 0, `max_tokens` 8, with the usage chunk (`stream_options`). The rounds
go round the servers in turn (every other round in reverse), so the machine's drift hits each
alike. Prints the median time to first token of each per server, with the ratio llamasite /
llama.cpp server, and the prompt tokens and cached tokens each server reported (usage's
`prompt_tokens_details.cached_tokens`; llama.cpp's `timings.cache_n` and `prompt_n` besides).

A server that refuses images at the warm-up (a 400: this server, until its runtime serves them)
is reported with its answer, and the others are measured all the same.

    .venv/bin/python -m bench.vision [--llama-server PATH] [--rounds 7] [--image-size 256] [--out FILE]
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import statistics
import struct
import tempfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import client
from bench.__main__ import bench_parser, format_value, log_to_console, report, side_by_side
from bench.servers import Running

logger = logging.getLogger("bench.vision")
N_CTX = 4096
SLOTS = 4
MAX_TOKENS = 8
LLAMA_CPP = "llama.cpp server"  # side_by_side's name for it
NOTES = client.HISTORY * 6  # ~500 tokens after the image: reprocessed unless the image was found cached
QUESTION = "Is this picture of the harbour, and what should I comment on first?"
ANSWER = "It looks like coloured noise rather than the harbour. Comment on the lighting plan first."
FOLLOW_UP = "What colour is the top left corner of the picture?"
USAGE = {"stream_options": {"include_usage": True}}


def png(seed: int, size: int) -> bytes:
    """A `size`×`size` RGB PNG of random pixels, the same for the same seed (barely compressed: ~3 bytes a pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = random.Random(seed).randbytes(size * size * 3)
    rows = b"".join(b"\x00" + pixels[row * size * 3 : (row + 1) * size * 3] for row in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def first_turn(image: bytes) -> list[dict[str, Any]]:
    """(a): the image first, so that every token after it is cached only if the image was."""
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": NOTES + QUESTION}]
    return [{"role": "user", "content": content}]


def follow_up(image: bytes) -> list[dict[str, Any]]:
    """(b): (a), a fixed answer (the same for every server, unlike their own) and a new question."""
    return [*first_turn(image), {"role": "assistant", "content": ANSWER}, {"role": "user", "content": FOLLOW_UP}]


def text_only(number: int) -> list[dict[str, Any]]:
    """(c), the baseline: (a)'s text without the image, new in each round (its number first)."""
    return [{"role": "user", "content": f"Round {number}. {NOTES}{QUESTION}"}]


def cases(image: bytes, number: int) -> dict[str, list[dict[str, Any]]]:
    """A round's requests, in order: (b) right after (a), so that (a) is what it finds cached."""
    return {"first": first_turn(image), "follow-up": follow_up(image), "text only": text_only(number)}


CASES = {
    "first": "(a) first prompt with an image",
    "follow-up": "(b) follow-up about it",
    "text only": "(c) baseline: (a) without the image",
}


@dataclass
class Server:
    name: str
    running: Running
    refused: str = ""  # the server's answer to the warm-up, when it refused the image
    streams: dict[str, list[client.Stream]] = field(default_factory=lambda: {case: [] for case in CASES})

    def ask(self, messages: list[dict[str, Any]]) -> client.Stream:
        running = self.running
        return asyncio.run(client.stream_chat(running.url, running.model, MAX_TOKENS, messages=messages, options=USAGE))

    def warm_up(self, image: bytes, number: int) -> None:
        """Every case once (the model's load, the connection); a refusal is kept, not raised."""
        try:
            for messages in cases(image, number).values():
                self.ask(messages)
        except RuntimeError as error:  # the stream's status was not 200
            found = re.search(r'"message": ?"((?:[^"\\]|\\.)*)"', str(error))
            self.refused = found[1] if found else str(error)[-300:]
            logger.warning("%s refused the image: %s", self.name, self.refused)

    def round(self, image: bytes, number: int) -> None:
        for case, messages in cases(image, number).items():
            stream = self.ask(messages)
            self.streams[case].append(stream)
            logger.info("%s %s: TTFT %s, %s", self.name, case, milliseconds(stream.ttft_s), tokens_text(stream))


def milliseconds(seconds: float | None) -> str:
    return "no token" if seconds is None else f"{seconds * 1000:.1f} ms"


def prompt_figures(stream: client.Stream) -> dict[str, int]:
    """What the server said of the prompt: its tokens, those found cached, and llama.cpp's timings."""
    chunk = stream.usage_chunk or {}
    usage, timings = chunk.get("usage") or {}, chunk.get("timings") or {}
    figures = {
        "prompt_tokens": usage.get("prompt_tokens", -1),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", -1),
    }
    figures |= {key: timings[key] for key in ("cache_n", "prompt_n") if key in timings}
    return figures


def tokens_text(stream: client.Stream) -> str:
    return ", ".join(f"{key} {value}" for key, value in prompt_figures(stream).items())


def median_ttft_ms(streams: list[client.Stream]) -> float | None:
    """The median over the streams that gave a token (an answer may end before its first)."""
    ttfts = [s.ttft_s * 1000 for s in streams if s.ttft_s is not None]
    return statistics.median(ttfts) if ttfts else None


def median_prompt(streams: list[client.Stream]) -> str:
    """Medians of the prompt tokens and the cached ones (and llama.cpp's cache_n + prompt_n)."""
    figures = [prompt_figures(s) for s in streams]
    medians = {key: statistics.median(f[key] for f in figures) for key in figures[0]} if figures else {}
    if not medians:
        return "–"
    text = f"{medians['prompt_tokens']:.0f} / {medians['cached_tokens']:.0f}"
    if "cache_n" in medians:
        text += f" ({medians['cache_n']:.0f} + {medians['prompt_n']:.0f})"
    return text


def table(servers: list[Server], rounds: int, image_size: int) -> list[str]:
    """One column per server; llamasite's TTFT cells carry its ratio to llama.cpp's server."""
    measured = [s for s in servers if not s.refused]
    ttft = {s.name: {case: median_ttft_ms(s.streams[case]) for case in CASES} for s in measured}
    baseline = ttft.get(LLAMA_CPP, {})
    lines = [
        f"## Vision: an image, then a follow-up about it (SmolLM2 with a tiny random-weight projector, "
        f"16 tokens an image; {image_size}×{image_size} PNG, a new one each of {rounds} rounds; "
        f"max_tokens {MAX_TOKENS})",
        "",
        "Medians; ratios are llamasite / llama.cpp server. Tokens: prompt / cached (usage's "
        "`prompt_tokens_details.cached_tokens`), and llama.cpp's `timings` (cache_n + prompt_n).",
        "",
        "| figure | " + " | ".join(s.name for s in servers) + " |",
        "|---" * (len(servers) + 1) + "|",
    ]

    def ttft_cell(server: Server, case: str) -> str:
        if server.refused:
            return "refused"
        value, base = ttft[server.name][case], baseline.get(case)
        ratio = f" ({value / base:.2f}×)" if value is not None and base and server.name != LLAMA_CPP else ""
        return format_value(value) + ratio

    for case, title in CASES.items():
        lines.append(f"| {title}: TTFT ms | " + " | ".join(ttft_cell(s, case) for s in servers) + " |")
        cells = ["–" if s.refused else median_prompt(s.streams[case]) for s in servers]
        lines.append(f"| {title}: prompt tokens / cached | " + " | ".join(cells) + " |")
    follow_ratio, image_cost = [], []
    for server in servers:
        first, follow, text = (ttft.get(server.name, {}).get(case) for case in CASES)
        follow_ratio.append(f"{follow / first:.2f}" if first and follow else "–")
        image_cost.append(f"{first - text:+.0f}" if first and text else "–")
    lines.append("| (b) TTFT / (a) TTFT | " + " | ".join(follow_ratio) + " |")
    lines.append("| (a) − (c) TTFT ms: what the image adds | " + " | ".join(image_cost) + " |")
    notes = [f"- {s.name} refused images: {s.refused}" for s in servers if s.refused]
    for server in measured:
        for case, streams in server.streams.items():
            if empty := sum(stream.ttft_s is None for stream in streams):
                notes.append(f"- {server.name}, {case}: {empty} answers ended before a token (not in the median)")
    return lines + ([""] + notes if notes else [])


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="images per server (median)")
    parser.add_argument("--image-size", type=int, default=256, help="the PNGs' width and height")
    args = parser.parse_args()
    log_to_console()
    logging.getLogger("gguf").setLevel(logging.WARNING)  # the projector's writer says what it writes
    from inference.management.commands.install_default_model import bundled_default_model
    from tests.gguf_files import write_projector

    with tempfile.TemporaryDirectory(prefix="vision-bench-") as scratch, ExitStack() as stack:
        projector = write_projector(Path(scratch) / f"mmproj-{bundled_default_model().stem}.gguf")
        servers = [
            Server(name, stack.enter_context(start()))
            for name, start in side_by_side(args.llama_server, N_CTX, SLOTS, projector).items()
        ]
        for server in servers:  # an image no round has (not seed -1: random.Random(-1) is Random(1))
            server.warm_up(png(args.rounds, args.image_size), args.rounds)
        measured = [s for s in servers if not s.refused]
        for number in range(args.rounds):
            image = png(number, args.image_size)
            for server in measured if number % 2 == 0 else measured[::-1]:
                server.round(image, number)
    report(table(servers, args.rounds, args.image_size), args.out)


if __name__ == "__main__":
    main()
