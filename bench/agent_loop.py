"""Benchmark: an agent's loop — a long system prompt and many tools repeated every turn, several
conversations interleaved over few slots — and a conversation's next turn after an idle unload.

Agent loop: a ~3,000-token system prompt and 20 tools, `--conversations` conversations of
`--turns` turns each, their turns interleaved and sent by 4 clients, `max_tokens` 64: total wall
time and time to first token (p50, p99) on this server and, given its binary, llama.cpp's server
with its defaults (4 slots, its own host-RAM cache).

Started together: four agents whose conversations share a system prompt and tools no request
had before start at the same moment: the slowest one's time to first token against one agent's
alone (on another fresh prefix). A server that processes the shared prefix once keeps the ratio
near 1; one that processes it for each agent side by side, near 4.

After an unload: turn 1 of a long conversation, the model unloaded (ours: the admin unload, so
its prompt cache goes to disk; llama.cpp's: a restart), then turn 2: its time to first token
against turn 1's (cold).

    .venv/bin/python -m bench.agent_loop [--llama-server PATH] [--conversations 8] [--turns 6] [--out FILE]

`--out FILE` appends the table to FILE (make bench: bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import logging

from bench import client
from bench.__main__ import admin, bench_parser, log_to_console, report, side_by_side
from bench.servers import Running

logger = logging.getLogger("bench.agent_loop")
N_CTX = 8192
CLIENTS = 4
MAX_TOKENS = 64
RULE = "When the user asks for a change, read the file first, change only what was asked, and say what you changed. "
SYSTEM = "You are a coding agent working in the user's repository. " + RULE * 130  # ~3,000 tokens
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{number}",
            "description": f"Tool {number}: does step {number} of the workflow and reports what it did.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "detail": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
    for number in range(20)
]


def turn_messages(conversation: int, turn: int, system: str = SYSTEM) -> list[dict[str, str]]:
    """Conversation `conversation` up to its turn `turn` (1-based): the same for every server."""
    messages = [{"role": "system", "content": system}]
    for earlier in range(1, turn + 1):
        messages.append(
            {"role": "user", "content": f"Conversation {conversation}, step {earlier}: fix issue {earlier}."}
        )
        if earlier < turn:
            messages.append({"role": "assistant", "content": f"Done: issue {earlier} fixed in file_{earlier}.py."})
    return messages


async def agent_loop(running: Running, conversations: int, turns: int) -> dict[str, float]:
    """Every conversation's turns, in order within it, interleaved across them, by 4 clients; a
    turn the server answers with an error counts as failed."""
    order = [(conversation, turn) for turn in range(1, turns + 1) for conversation in range(conversations)]
    done = {(conversation, 0): asyncio.Event() for conversation in range(conversations)}
    for event in done.values():
        event.set()
    done.update({key: asyncio.Event() for key in order})
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for key in order:
        queue.put_nowait(key)
    ttfts: list[float] = []
    failures: list[str] = []  # turns the server refused (the conversation goes on without them)

    async def worker() -> None:
        while not queue.empty():
            conversation, turn = queue.get_nowait()
            await done[(conversation, turn - 1)].wait()
            try:
                stream = await client.stream_chat(
                    running.url, running.model, MAX_TOKENS, messages=turn_messages(conversation, turn), tools=TOOLS
                )
                ttfts.append(stream.ttft_s or 0.0)
            except RuntimeError as error:
                failures.append(str(error).split("\\r\\n\\r\\n")[-1][:300])
            done[(conversation, turn)].set()

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    if failures:
        logger.warning("%s: %d turns failed, the first with %s", running.url, len(failures), failures[0])
    return {
        "wall_s": asyncio.get_running_loop().time() - started,
        "ttft_p50_s": client.percentile(ttfts or [0.0], 0.5),
        "ttft_p99_s": client.percentile(ttfts or [0.0], 0.99),
        "failed": len(failures),
    }


async def _first_token_of(running: Running, system: str, conversation: int) -> float:
    messages = turn_messages(conversation, 1, system=system)
    stream = await client.stream_chat(running.url, running.model, MAX_TOKENS, messages=messages, tools=TOOLS)
    return stream.ttft_s or 0.0


async def together(running: Running) -> tuple[float, float]:
    """One agent's TTFT alone on a fresh prefix; then the slowest of four agents' started at once
    on another fresh prefix that the four share."""
    alone = await _first_token_of(running, f"Working alone. {SYSTEM}", 0)
    four = await asyncio.gather(*(_first_token_of(running, f"Working together. {SYSTEM}", n) for n in range(CLIENTS)))
    return alone, max(four)


def first_token(running: Running, turn: int) -> float:
    """A turn of a conversation whose system prompt no other request began with."""
    messages = turn_messages(0, turn, system=f"Session {N_CTX}. {SYSTEM}")
    return (
        asyncio.run(client.stream_chat(running.url, running.model, MAX_TOKENS, messages=messages, tools=TOOLS)).ttft_s
        or 0.0
    )


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    log_to_console()
    servers = side_by_side(args.llama_server, N_CTX, slots=CLIENTS)
    lines = [
        f"## Agent loop ({args.conversations} conversations × {args.turns} turns, {CLIENTS} clients, "
        f"max_tokens {MAX_TOKENS}) and a turn after an unload",
        "",
        "| server | agent loop wall s | TTFT p50 s | TTFT p99 s | turns failed | one agent TTFT s "
        f"| slowest of {CLIENTS} started together s | ratio | turn 1 TTFT s (cold) "
        "| turn 2 TTFT s after an unload | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, start in servers.items():
        with start() as running:
            loop = asyncio.run(agent_loop(running, args.conversations, args.turns))
            alone, slowest = asyncio.run(together(running))
            cold = first_token(running, 1)
            if name == "llamasite":
                admin(running, "/admin/unload", model=running.model)
                after = first_token(running, 2)
        if name != "llamasite":
            with start() as running:  # llama.cpp's server keeps nothing across a restart
                after = first_token(running, 2)
        lines.append(
            f"| {name} | {loop['wall_s']:.1f} | {loop['ttft_p50_s']:.2f} | {loop['ttft_p99_s']:.2f} | {loop['failed']} "
            f"| {alone:.2f} | {slowest:.2f} | {slowest / alone if alone else 0.0:.2f}× | {cold:.2f} "
            f"| {after:.2f} | {after / cold if cold else 0.0:.2f}× |"
        )
        logger.info("%s", lines[-1])
    report(lines, args.out)


if __name__ == "__main__":
    main()
