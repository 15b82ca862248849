"""`python -m bench` (`make bench`): this server against its peers, on the bundled SmolLM2, in one run.

Baselines, each measured in the same run with the same model and settings (temperature 0,
128 generated tokens, streaming):
  1. in-process llama-cpp-python (`Llama.create_chat_completion`): the floor of Python overhead;
  2. llama-cpp-python's own server (`python -m llama_cpp.server`, from a bench-only venv);
  3. llama.cpp's C++ `llama-server`, when `--llama-server PATH` names a built binary.
This server runs once per `--config` (its model_manager settings; default: none), and once more
with request records off to measure what recording costs.

Figures are medians over `--runs`; ratios are to baseline 1. The table is printed and written
to bench/RESULTS.md with the machine's cores, CPU and versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import httpx

from bench import client
from bench.servers import PROJECT_DIR, Running, llama_cpp_python_server, llama_cpp_server, llamasite

N_CTX = 4096
RESULTS = PROJECT_DIR / "bench" / "RESULTS.md"


def thread_counts() -> tuple[int, int]:
    """(n_threads, n_threads_batch) as this server chooses them by default; every server gets them."""
    sys.path.insert(0, str(PROJECT_DIR))
    from inference.config import generation_threads, physical_cores

    return generation_threads(), physical_cores()


def default_model() -> Path:
    return PROJECT_DIR / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure_server(running: Running, runs: int, clients: int, requests: int) -> dict[str, float]:
    single = asyncio.run(client.single_stream(running.url, running.model, runs))
    concurrent = asyncio.run(
        client.concurrent_streams(running.url, running.model, clients, requests, running.health_path)
    )
    return {**single, **concurrent}


def admin(running: Running, path: str, **body: Any) -> dict:
    response = httpx.post(
        f"{running.url}{path}", json=body, headers={"Authorization": "Bearer bench"}, timeout=120
    )
    response.raise_for_status()
    return response.json()


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def lifecycle_figures(running: Running, cycles: int) -> dict[str, float]:
    """Cold-load TTFT minus load time; RSS after `cycles` load/unload cycles vs before."""

    async def one(max_tokens: int) -> client.Stream:
        return await client.stream_chat(running.url, running.model, max_tokens)

    admin(running, "/admin/unload", model="all")
    cold = asyncio.run(one(client.MAX_TOKENS))
    with sqlite3.connect(running.workdir / "db.sqlite3") as database:
        [(load_ms,)] = database.execute(
            "SELECT load_ms FROM inference_requestrecord WHERE completion_id = ?", (cold.completion_id,)
        ).fetchall()
    warm = asyncio.run(one(client.MAX_TOKENS))
    admin(running, "/admin/unload", model="all")
    before = rss_mb(running.process.pid)
    for _ in range(cycles):
        asyncio.run(one(4))
        admin(running, "/admin/unload", model="all")
    after = rss_mb(running.process.pid)
    return {
        "cold_ttft_minus_load_ms": cold.ttft_s * 1000 - (load_ms or 0),
        "load_ms": load_ms or 0,
        "warm_ttft_ms": warm.ttft_s * 1000,
        "rss_before_mb": before,
        "rss_after_cycles_mb": after,
    }


def in_process(model: Path, threads: tuple[int, int], runs: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", "--model", str(model), "--n-ctx", str(N_CTX),
         "--n-threads", str(threads[0]), "--n-threads-batch", str(threads[1]), "--runs", str(runs)],
        cwd=PROJECT_DIR, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


ROWS = [
    ("tokens_per_s", "single stream: tokens/s", True),
    ("ttft_ms", "single stream: TTFT ms", True),
    ("aggregate_tokens_per_s", "4 clients × 8: aggregate tokens/s", True),
    ("ttft_ms_p50", "4 clients × 8: TTFT p50 ms", False),
    ("ttft_ms_p99", "4 clients × 8: TTFT p99 ms", False),
    ("delivered_fraction", "4 clients × 8: tokens delivered / requested", False),
    ("health_ms_p50", "health (or /v1/models) p50 ms during 4 streams", False),
    ("health_ms_p99", "health (or /v1/models) p99 ms during 4 streams", False),
]


def format_value(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def table(results: dict[str, dict[str, float]], baseline: str) -> list[str]:
    names = list(results)
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, title, with_ratio in ROWS:
        cells = []
        for name in names:
            value = results[name].get(key)
            base = results[baseline].get(key)
            text = format_value(value)
            if with_ratio and value is not None and base and name != baseline:
                text += f" ({value / base:.2f}×)"
            cells.append(text)
        if any(cell != "–" for cell in cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def machine(threads: tuple[int, int]) -> list[str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    return [
        f"- machine: {os.cpu_count()} logical cores ({threads[1]} physical), {cpu}",
        f"- Python {platform.python_version()}, llama-cpp-python {metadata.version('llama-cpp-python')}, "
        f"Django {metadata.version('django')}, daphne {metadata.version('daphne')}",
        f"- model: SmolLM2-135M-Instruct Q4_1, n_ctx {N_CTX}, n_threads {threads[0]}, "
        f"n_threads_batch {threads[1]} (every server), "
        f"temperature 0, {client.MAX_TOKENS} tokens, streaming",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="llamasite against its peers")
    parser.add_argument("--runs", type=int, default=5, help="single-stream runs per server (median)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8, help="requests per concurrent client")
    parser.add_argument("--cycles", type=int, default=20, help="load/unload cycles for the RSS figure")
    parser.add_argument("--llama-cpp-python", metavar="PYTHON", help="python of the bench venv with llama-cpp-python[server]")
    parser.add_argument("--llama-server", metavar="PATH", help="a built llama.cpp llama-server binary")
    parser.add_argument(
        "--config", action="append", default=[], metavar="JSON",
        help="model_manager settings for this server, as a JSON object or a file (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()

    model, threads = default_model(), thread_counts()
    base_settings = {"n_ctx": N_CTX, "n_threads": threads[0], "n_threads_batch": threads[1]}
    configs = [json.loads(Path(c).read_text() if Path(c).is_file() else c) for c in options.config] or [{}]

    results: dict[str, dict[str, float]] = {}
    print("in-process llama-cpp-python …", flush=True)
    results["in-process"] = in_process(model, threads, options.runs)
    servers: list[tuple[str, Callable[[], AbstractContextManager[Running]]]] = []
    for settings in configs:
        label = "llamasite" + (f" {json.dumps(settings)}" if settings else "")
        servers.append((label, lambda s=settings: llamasite(model, {**base_settings, **s})))
    servers.append(("llamasite, records off", lambda: llamasite(model, base_settings, records=False)))
    if options.llama_cpp_python:
        servers.append(("llama-cpp-python server", lambda: llama_cpp_python_server(options.llama_cpp_python, model, N_CTX, threads)))
    if options.llama_server:
        servers.append(("llama.cpp server", lambda: llama_cpp_server(options.llama_server, model, N_CTX, threads)))

    lifecycle: dict[str, float] = {}
    for name, start in servers:
        print(f"{name} …", flush=True)
        with start() as running:
            results[name] = measure_server(running, options.runs, options.clients, options.requests)
            if name == "llamasite":
                lifecycle = lifecycle_figures(running, options.cycles)

    ours, off = results[servers[0][0]], results["llamasite, records off"]
    report = [
        f"# Benchmark results ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        *machine(threads),
        "",
        "Ratios (×) are to baseline 1, in-process llama-cpp-python, measured in the same run.",
        "",
        *table(results, "in-process"),
        "",
        f"- usage recording: single-stream tokens/s with records {ours['tokens_per_s']:.1f} vs without "
        f"{off['tokens_per_s']:.1f} ({ours['tokens_per_s'] / off['tokens_per_s']:.3f}×); aggregate "
        f"{ours['aggregate_tokens_per_s']:.1f} vs {off['aggregate_tokens_per_s']:.1f} "
        f"({ours['aggregate_tokens_per_s'] / off['aggregate_tokens_per_s']:.3f}×)",
    ]
    if lifecycle:
        report += [
            f"- cold load: TTFT {lifecycle['cold_ttft_minus_load_ms'] + lifecycle['load_ms']:.0f} ms of which "
            f"load {lifecycle['load_ms']:.0f} ms: TTFT minus load {lifecycle['cold_ttft_minus_load_ms']:.0f} ms "
            f"(warm TTFT {lifecycle['warm_ttft_ms']:.0f} ms)",
            f"- RSS after {options.cycles} load/unload cycles: {lifecycle['rss_after_cycles_mb']:.0f} MB vs "
            f"{lifecycle['rss_before_mb']:.0f} MB before ({lifecycle['rss_after_cycles_mb'] - lifecycle['rss_before_mb']:+.0f} MB)",
        ]
    text = "\n".join(report) + "\n"
    print("\n" + text)
    options.out.write_text(text)


if __name__ == "__main__":
    main()
