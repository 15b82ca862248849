"""Benchmark: the usage dashboard over 30 days of 1,000,000 request records.

Fills a scratch SQLite database (never the server's) with a million records spread over 30
days, builds the daily rollups, then times, each as the median of several runs:
  - the dashboard page for the last 30 days (summary from the rollups, the slowest and failed
    tables from the records), rendered through Django;
  - the baseline: the same 30-day summary computed from the records themselves.
Prints the times and the ratio baseline / dashboard, and whether the page answers in < 1 s.

    .venv/bin/python -m bench.dashboard [--records 1000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path


def setup_django(database: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{database}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llamasite.settings")
    os.environ["LLAMA_SERVER_CONFIG"] = str(database.parent / "config.json")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fill(database: Path, count: int) -> None:
    """Insert `count` records over the last 30 days straight through sqlite3 (fast)."""
    now = datetime.now(UTC)
    rng = random.Random(42)
    models = ["SmolLM2-135M-Instruct.Q4_1", "gemma-3-270m", "qwen2.5-0.5b", "llama-3.2-1b"]
    statuses = ["ok"] * 96 + ["error"] * 2 + ["cancelled"] * 2
    columns = (
        "instance, completion_id, model, endpoint, stream, status, http_status, error_code, "
        "error_message, prompt_tokens, completion_tokens, finish_reason, queue_wait_ms, load_ms, "
        "ttft_ms, duration_ms, tokens_per_second, client_address, user_agent, api_key, created_at"
    )

    def rows():
        for index in range(count):
            status = rng.choice(statuses)
            ok = status == "ok"
            created = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
            yield (
                "127.0.0.1:8080",
                f"chatcmpl-{index:012d}",
                rng.choice(models),
                "/v1/chat/completions",
                rng.random() < 0.5,
                status,
                200 if ok else 404 if status == "error" else 499,
                "" if ok else "model_not_found",
                "",
                rng.randint(10, 2000),
                rng.randint(0, 512) if ok else 0,
                "stop" if ok else "",
                rng.uniform(0, 50),
                None,
                rng.lognormvariate(4, 0.8) if ok else None,
                rng.uniform(100, 20000),
                rng.uniform(40, 160) if ok else None,
                "127.0.0.1",
                "bench",
                None,
                created.strftime("%Y-%m-%d %H:%M:%S.%f"),
            )

    with sqlite3.connect(database) as connection:
        connection.executemany(
            f"INSERT INTO inference_requestrecord ({columns}) VALUES ({', '.join('?' * 21)})", rows()
        )


def median_seconds(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="llamasite-bench-"))
    database = scratch / "bench.sqlite3"
    setup_django(database)
    started = time.perf_counter()
    fill(database, options.records)
    filled = time.perf_counter() - started

    from django.contrib.auth.models import User
    from django.test import Client

    from inference.models import DailyUsage
    from inference.selectors import usage as usage_selectors
    from inference.services import records as record_services

    started = time.perf_counter()
    record_services.daily_usage_rebuild()
    rolled = time.perf_counter() - started
    User.objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(User.objects.get(username="bench"))

    def dashboard(range_name: str) -> None:
        response = client.get(f"/dashboard/?range={range_name}")
        assert response.status_code == 200 and b'data-chart="requests"' in response.content

    def baseline() -> None:
        now = datetime.now(UTC)
        tallies: dict = defaultdict(DailyUsage)
        for created, model, *values in usage_selectors._record_values(now - timedelta(days=30), now, None):
            tallies[(created.date(), model)].count_request(*values)

    page = median_seconds(lambda: dashboard("30d"), options.runs)
    day_page = median_seconds(lambda: dashboard("day"), options.runs)
    raw = median_seconds(baseline, max(1, options.runs // 2))
    print(f"records: {options.records:,} over 30 days (insert {filled:.1f} s, rollups built in {rolled:.1f} s)")
    print(f"dashboard page, last 30 days (median of {options.runs}): {page * 1000:.0f} ms")
    print(f"dashboard page, last day, from ~{options.records // 30:,} records: {day_page * 1000:.0f} ms")
    print(f"baseline: the 30-day summary from the records: {raw * 1000:.0f} ms")
    print(f"ratio baseline / dashboard: {raw / page:.1f}x; under 1 s: {'yes' if page < 1 else 'NO'}")
    sys.exit(0 if page < 1 else 1)


if __name__ == "__main__":
    main()
