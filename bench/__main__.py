"""`python -m bench` (`make bench`): this server against its peers, on the bundled SmolLM2, in one run.

Baselines, each measured in the same run with the same model and settings (temperature 0,
128 generated tokens, streaming):
  1. in-process llama-cpp-python (`Llama.create_chat_completion`): the floor of Python overhead;
  2. llama-cpp-python's own server (`python -m llama_cpp.server`, from a bench-only venv);
  3. llama.cpp's C++ `llama-server`, when `--llama-server PATH` names a built binary.
This server runs once per `--config` (its model_manager settings; default: none), and once more
with request records off to measure what recording costs.

All of them are started first, then the single-stream runs go round them in turn, so that the
machine's drift (it is shared and noisy) falls on every one alike; the concurrent runs follow,
one server at a time. Figures are medians; ratios are to baseline 1. The table is printed and
written to bench/RESULTS.md with the machine's cores, CPU and versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench import client
from bench.servers import PROJECT_DIR, Running, llama_cpp_python_server, llama_cpp_server, llamasite

N_CTX = 4096
RESULTS = PROJECT_DIR / "bench" / "RESULTS.md"
OURS, RECORDS_OFF, IN_PROCESS = "llamasite", "llamasite, records off", "in-process"
# Every request of this bench asks the same at temperature 0, so with drafting on this server
# recalls the answers it gave before (runtime.drafting's memory): the decode speed is this one's.
DRAFTING_OFF = "llamasite, speculative off"


def thread_counts() -> tuple[int, int]:
    """(n_threads, n_threads_batch) as this server chooses them by default; every server gets them."""
    sys.path.insert(0, str(PROJECT_DIR))
    from inference.cpus import usable_cores

    cores = usable_cores()
    return cores, cores


Starter = Callable[[], AbstractContextManager[Running]]


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options every bench against llama.cpp's server takes: --llama-server and --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--llama-server", metavar="PATH", help="a built llama.cpp llama-server binary")
    parser.add_argument("--out", type=Path, help="a markdown file to append the table to")
    return parser


def log_to_console() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def side_by_side(llama_server: str | None, n_ctx: int, slots: int, projector: Path | None = None) -> dict[str, Starter]:
    """This server ("llamasite", `slots` parallel) and, given its binary, llama.cpp's ("llama.cpp
    server", `slots` slots, its defaults otherwise), both on the bundled model with `n_ctx` and
    the same threads, and with `projector` (an mmproj file named `mmproj-NAME.gguf`: ours finds
    it beside the model, llama.cpp's is given `--mmproj`); each started when called."""
    from inference.management.commands.install_default_model import bundled_default_model

    model_path, threads = bundled_default_model(), thread_counts()
    beside = (projector,) if projector else ()
    extra = ["--mmproj", str(projector)] if projector else []
    servers: dict[str, Starter] = {
        "llamasite": lambda: llamasite(model_path, {"n_ctx": n_ctx, "parallel": slots}, more_models=beside)
    }
    if llama_server:
        servers["llama.cpp server"] = lambda: llama_cpp_server(llama_server, model_path, n_ctx, threads, slots, extra)
    return servers


class InProcess:
    """Baseline 1, in a subprocess that runs one completion per request."""

    def __init__(self, model: Path, threads: tuple[int, int]) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.inprocess",
                "--model",
                str(model),
                "--n-ctx",
                str(N_CTX),
                "--n-threads",
                str(threads[0]),
                "--n-threads-batch",
                str(threads[1]),
            ],
            cwd=PROJECT_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline().strip() == "ready"

    def stream(self, messages: list[dict[str, str]], max_tokens: int) -> client.Stream:
        self.process.stdin.write(f"{max_tokens} {json.dumps(messages)}\n")
        self.process.stdin.flush()
        run = json.loads(self.process.stdout.readline())
        rate = (run["tokens"] - 1) / (run["last"] - run["first"]) if run["tokens"] > 1 else 0.0
        return client.Stream(run["ttft_s"], run["tokens"], rate, 0.0, "")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@dataclass
class Target:
    name: str
    running: Running | None = None  # None: the in-process baseline
    in_process: InProcess | None = None
    streams: list[client.Stream] = field(default_factory=list)
    fresh: list[client.Stream] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def stream(
        self,
        prompt: str = client.PROMPT,
        max_tokens: int = client.MAX_TOKENS,
        messages: list[dict[str, str]] | None = None,
    ) -> client.Stream:
        messages = messages or [{"role": "user", "content": prompt}]
        if self.in_process:
            return self.in_process.stream(messages, max_tokens)
        running = self.running
        return asyncio.run(client.stream_chat(running.url, running.model, max_tokens, messages=messages))


def single_stream_rounds(targets: list[Target], runs: int) -> None:
    for target in targets:
        target.stream()  # warm-up: load, caches
    for run in range(runs):  # every other round in reverse, so no server always goes first
        for target in targets if run % 2 == 0 else targets[::-1]:
            target.streams.append(target.stream())
    for run in range(runs):  # after the repeated prompt: a new one replaces its cached prefix
        for target in targets if run % 2 == 0 else targets[::-1]:
            target.fresh.append(target.stream(client.fresh_prompt(run), max_tokens=2))
    conversations: dict[str, list[tuple[float, float]]] = {target.name: [] for target in targets}
    for run in range(3):  # a conversation's first turn (cold) and its next turn (prompt cache)
        for target in targets if run % 2 == 0 else targets[::-1]:
            cold = target.stream(max_tokens=2, messages=client.conversation(run, follow_up=False))
            follow = target.stream(max_tokens=2, messages=client.conversation(run, follow_up=True))
            conversations[target.name].append((cold.ttft_s * 1000, follow.ttft_s * 1000))
    for target in targets:
        cold_ms = statistics.median(cold for cold, _ in conversations[target.name])
        follow_ms = statistics.median(follow for _, follow in conversations[target.name])
        target.figures.update(history_ttft_ms=cold_ms, follow_up_ttft_ms=follow_ms, follow_up_ratio=follow_ms / cold_ms)
        target.figures.update(
            tokens_per_s=statistics.median(s.decode_tokens_per_s for s in target.streams),
            ttft_ms=statistics.median(s.ttft_s or 0.0 for s in target.streams) * 1000,
            fresh_ttft_ms=statistics.median(s.ttft_s or 0.0 for s in target.fresh) * 1000,
        )


def concurrent_rounds(targets: list[Target], clients: int, requests: int) -> None:
    """`clients` clients × `requests` requests per server, run as rounds of 2 requests per client
    going round the servers in turn (as the single-stream runs do)."""
    totals: dict[str, client.Concurrent] = {}
    for target in targets:
        asyncio.run(client.stream_chat(target.running.url, target.running.model, max_tokens=4))
    for round_number in range(max(1, requests // 2)):
        for target in targets if round_number % 2 == 0 else targets[::-1]:
            running = target.running
            result = asyncio.run(client.concurrent_streams(running.url, running.model, clients, 2, running.health_path))
            totals[target.name] = totals[target.name] + result if target.name in totals else result
    for target in targets:
        target.figures.update(totals[target.name].figures())


def admin(running: Running, path: str, **body: Any) -> dict:
    response = httpx.post(f"{running.url}{path}", json=body, headers={"Authorization": "Bearer bench"}, timeout=120)
    response.raise_for_status()
    return response.json()


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def lifecycle_figures(target: Target, cycles: int) -> dict[str, float]:
    """Cold-load TTFT minus load time; RSS after `cycles` load/unload cycles vs before."""
    running = target.running
    admin(running, "/admin/unload", model="all")
    cold = target.stream()
    with sqlite3.connect(running.workdir / "db.sqlite3") as database:
        [(load_ms,)] = database.execute(
            "SELECT load_ms FROM inference_requestrecord WHERE completion_id = ?", (cold.completion_id,)
        ).fetchall()
    admin(running, "/admin/unload", model="all")
    before = rss_mb(running.process.pid)
    for _ in range(cycles):
        target.stream(max_tokens=4)
        admin(running, "/admin/unload", model="all")
    after = rss_mb(running.process.pid)
    return {
        "cold_ttft_ms": cold.ttft_s * 1000,
        "load_ms": load_ms or 0.0,
        "rss_before_mb": before,
        "rss_after_cycles_mb": after,
    }


ROWS = [
    ("tokens_per_s", "single stream: tokens/s", True),
    ("ttft_ms", "single stream: TTFT ms (repeated prompt, cached)", True),
    ("fresh_ttft_ms", "single stream: TTFT ms (new prompt)", True),
    ("history_ttft_ms", "conversation with a 1,000-token history: TTFT ms", True),
    ("follow_up_ttft_ms", "its next turn: TTFT ms", True),
    ("follow_up_ratio", "next turn TTFT / first turn TTFT", False),
    ("aggregate_tokens_per_s", "{clients} clients × {requests}: aggregate tokens/s", False),
    ("ttft_ms_p50", "{clients} clients × {requests}: TTFT p50 ms", False),
    ("ttft_ms_p99", "{clients} clients × {requests}: TTFT p99 ms", False),
    ("delivered_fraction", "{clients} clients × {requests}: tokens delivered / requested", False),
    ("health_ms_p50", "health (or /v1/models) p50 ms during {clients} streams", False),
    ("health_ms_p99", "health (or /v1/models) p99 ms during {clients} streams", False),
]


def report(lines: list[str], out: Path | None) -> None:
    """Log a markdown section and append it to `out` (the benches that `make bench` runs after
    this one add theirs to bench/RESULTS.md)."""
    text = "\n".join(lines) + "\n"
    logging.getLogger("bench").info("\n%s", text)
    if out:
        with out.open("a") as file:
            file.write("\n" + text)


def format_value(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def table(targets: list[Target], clients: int, requests: int) -> list[str]:
    baseline = targets[0].figures
    lines = ["| figure | " + " | ".join(t.name for t in targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for key, title, with_ratio in ROWS:
        cells = []
        for target in targets:
            value, base = target.figures.get(key), baseline.get(key)
            text = format_value(value)
            if with_ratio and value is not None and base and target is not targets[0]:
                text += f" ({value / base:.2f}×)"
            cells.append(text)
        lines.append(f"| {title.format(clients=clients, requests=requests)} | " + " | ".join(cells) + " |")
    return lines


def versus(what: str, name: str, figures: dict[str, float], other: str, others: dict[str, float]) -> str:
    """A line comparing two of this server's variants' single-stream and aggregate tokens/s."""
    single, aggregate = figures["tokens_per_s"], figures["aggregate_tokens_per_s"]
    other_single, other_aggregate = others["tokens_per_s"], others["aggregate_tokens_per_s"]
    return (
        f"- {what} ({name} vs {other}): single-stream tokens/s {single:.1f} vs {other_single:.1f} "
        f"({single / other_single:.3f}×); aggregate {aggregate:.1f} vs {other_aggregate:.1f} "
        f"({aggregate / other_aggregate:.3f}×)"
    )


def machine(threads: tuple[int, int]) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return [
        f"- machine: {os.cpu_count()} logical cores ({threads[1]} physical), {cpu}",
        f"- Python {platform.python_version()}, llama-cpp-python {metadata.version('llama-cpp-python')}, "
        f"Django {metadata.version('django')}, daphne {metadata.version('daphne')}",
        f"- model: SmolLM2-135M-Instruct Q4_1, n_ctx {N_CTX}, n_threads {threads[0]}, "
        f"n_threads_batch {threads[1]}, flash attention on (every server), temperature 0, "
        f"{client.MAX_TOKENS} tokens, streaming",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="llamasite against its peers")
    parser.add_argument("--runs", type=int, default=9, help="single-stream runs per server (median)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrent client")
    parser.add_argument("--cycles", type=int, default=20, help="load/unload cycles for the RSS figure")
    parser.add_argument(
        "--llama-cpp-python", metavar="PYTHON", help="python of the bench venv with llama-cpp-python[server]"
    )
    parser.add_argument("--llama-server", metavar="PATH", help="a built llama.cpp llama-server binary")
    parser.add_argument("--llama-server-slots", type=int, default=4, help="its slots (as our parallel)")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="JSON",
        help="model_manager settings for this server, as a JSON object or a file (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()

    model, threads = PROJECT_DIR / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", thread_counts()
    base = {"n_ctx": N_CTX, "n_threads": threads[0], "n_threads_batch": threads[1]}
    configs = [json.loads(Path(c).read_text() if Path(c).is_file() else c) for c in options.config] or [{}]

    with ExitStack() as stack:
        print("starting the servers …", flush=True)
        in_process = InProcess(model, threads)
        stack.callback(in_process.close)
        targets = [Target(IN_PROCESS, in_process=in_process)]
        for settings in configs:
            name = OURS + (f" {json.dumps(settings)}" if settings else "")
            targets.append(Target(name, stack.enter_context(llamasite(model, {**base, **settings}))))
        targets.append(Target(RECORDS_OFF, stack.enter_context(llamasite(model, base, records=False))))
        speculative_off = {**base, "speculative": "off"}
        targets.append(Target(DRAFTING_OFF, stack.enter_context(llamasite(model, speculative_off))))
        if options.llama_cpp_python:
            peer = llama_cpp_python_server(options.llama_cpp_python, model, N_CTX, threads)
            targets.append(Target("llama-cpp-python server", stack.enter_context(peer)))
        for slots in [options.llama_server_slots] if options.llama_server else []:
            peer = llama_cpp_server(options.llama_server, model, N_CTX, threads, slots)
            targets.append(Target(f"llama.cpp server, {slots} slots", stack.enter_context(peer)))

        print(f"single stream, {options.runs} rounds …", flush=True)
        single_stream_rounds(targets, options.runs)
        print(f"{options.clients} clients × {options.requests}, in rounds of 2 requests each …", flush=True)
        concurrent_rounds(targets[1:], options.clients, options.requests)
        ours = targets[1]
        print("load/unload cycles …", flush=True)
        lifecycle = lifecycle_figures(ours, options.cycles)

    figures = {target.name: target.figures for target in targets}
    report = [
        f"# Benchmark results ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        *machine(threads),
        "",
        f"Ratios (×) are to baseline 1, in-process llama-cpp-python, measured in the same run "
        f"(single-stream figures: medians of {options.runs} rounds going round every server in turn).",
        "",
        *table(targets, options.clients, options.requests),
        "",
        versus("usage recording", ours.name, ours.figures, RECORDS_OFF, figures[RECORDS_OFF]),
        versus("drafting", ours.name, ours.figures, DRAFTING_OFF, figures[DRAFTING_OFF])
        + " (every request asks the same: with drafting, this server recalls its earlier answers)",
        f"- cold load ({ours.name}): TTFT {lifecycle['cold_ttft_ms']:.0f} ms, of which load "
        f"{lifecycle['load_ms']:.0f} ms: TTFT minus load {lifecycle['cold_ttft_ms'] - lifecycle['load_ms']:.0f} ms "
        f"(the whole prompt is processed; a new prompt on a loaded model: {ours.figures['fresh_ttft_ms']:.0f} ms)",
        f"- RSS after {options.cycles} load/unload cycles: {lifecycle['rss_after_cycles_mb']:.0f} MB vs "
        f"{lifecycle['rss_before_mb']:.0f} MB before "
        f"({lifecycle['rss_after_cycles_mb'] - lifecycle['rss_before_mb']:+.0f} MB)",
    ]
    text = "\n".join(report) + "\n"
    print("\n" + text)
    options.out.write_text(text)


if __name__ == "__main__":
    main()
