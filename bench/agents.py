"""Benchmark: Codex and Claude Code round trips (one `codex exec` / `claude -p`, each with its
own instructions and tools) against this server and, given its binary, llama.cpp's server.

Each client runs `--runs` times in a row against each server, so the first run shows a cold
prompt and the later ones what the server's prompt cache saves on a prefix the client repeats.
Prints, per server and client, each run's seconds, exit status and the start of its answer.

    .venv/bin/python -m bench.agents [--llama-server PATH] [--runs 2] [--out FILE]
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from bench import agent_clients
from bench.__main__ import bench_parser, log_to_console, report, side_by_side
from bench.servers import Running

logger = logging.getLogger("bench.agents")
PROMPT = "Say hello in one short sentence."
N_CTX = 8192  # SmolLM2's trained context: both servers' default for it
MAX_OUTPUT_TOKENS = 256
TIMEOUT = 900


def round_trips(running: Running, runs: int) -> dict[str, list[agent_clients.Run]]:
    results: dict[str, list[agent_clients.Run]] = {"codex": [], "claude": []}
    for client, run in (("codex", _codex), ("claude", _claude)):
        if agent_clients.installed(client) is None:
            logger.warning("%s is not installed: run `make agent-clients`", client)
            continue
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix=f"bench-{client}-") as home:
                results[client].append(run(running, Path(home)))
    return results


def _codex(running: Running, home: Path) -> agent_clients.Run:
    return agent_clients.codex_exec(running.url, running.model, PROMPT, home, TIMEOUT)


def _claude(running: Running, home: Path) -> agent_clients.Run:
    return agent_clients.claude_print(running.url, running.model, PROMPT, home, TIMEOUT, MAX_OUTPUT_TOKENS)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=2, help="round trips per client and server")
    args = parser.parse_args()
    log_to_console()
    servers = side_by_side(args.llama_server, N_CTX, slots=4)
    lines = ["| server | client | run | seconds | exit | answer |", "|---|---|---|---|---|---|"]
    for name, start in servers.items():
        with start() as running:
            for client, runs in round_trips(running, args.runs).items():
                for number, run in enumerate(runs, start=1):
                    answer = " ".join((run.answer or run.stderr.strip() or "-").split())[:90].replace("|", "/")
                    lines.append(f"| {name} | {client} | {number} | {run.seconds:.1f} | {run.returncode} | {answer} |")
                    logger.info("%s", lines[-1])
    report(lines, args.out)


if __name__ == "__main__":
    main()
