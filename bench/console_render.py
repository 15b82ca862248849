"""Benchmark: the first render of each console page over 1,000,000 request records.

Fills a scratch SQLite database (never the server's) with request records spread over the last
30 days across four models and four API keys (bulk_create in batches), builds the daily rollups,
then GETs each page of PAGES through Django's test Client as a logged-in staff user: the first
render (its template, queries and files not read before; Django itself warmed up by one admin
page) and the median of the next few, in milliseconds. The models
directory holds small synthetic models named like the records' models, so every page has rows.

    .venv/bin/python -m bench.console_render [--records 1000000] [--runs 3] [--page /dashboard/?range=7d ...]
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bench.dashboard import setup_django

if TYPE_CHECKING:  # imported for real once Django is set up
    from django.test import Client

# The console pages, as staff open them; add new pages here (or pass --page).
PAGES = [
    "/dashboard/",
    "/dashboard/?range=30d",
    "/dashboard/models/",
    "/dashboard/playground/",
    "/dashboard/pull/",
    "/admin/",
    "/admin/inference/requestrecord/",
    "/admin/inference/discoveredmodel/",
    "/admin/inference/loadevent/",
]
MODELS = ["SmolLM2-135M-Instruct.Q4_1", "gemma-3-270m", "qwen2.5-0.5b", "llama-3.2-1b"]
API_KEYS = ["", "bench-key-1", "bench-key-2", "bench-key-3"]
INSTANCE = "127.0.0.1:8080"  # the default instance name: the server of the scratch config.json
BATCH = 5000
SLOW_MS = 1000


def write_scratch_config(scratch: Path) -> None:
    from tests.gguf_files import write_synthetic

    models = scratch / "models"
    models.mkdir()
    for name in MODELS:
        write_synthetic(models / f"{name}.gguf", context_length=8192)
    config = {
        "server": {"log_level": "WARNING"},
        "model_manager": {"models_directory": "models", "default_model": MODELS[0]},
    }
    (scratch / "config.json").write_text(json.dumps(config))


def fill(count: int) -> None:
    """`count` records over the last 30 days, through the ORM's bulk_create in batches."""
    from inference.models import RequestRecord

    now = datetime.now(UTC)
    rng = random.Random(42)
    statuses = ["ok"] * 96 + ["error"] * 2 + ["cancelled"] * 2
    batch: list[RequestRecord] = []
    for index in range(count):
        status = rng.choice(statuses)
        ok = status == "ok"
        prompt = rng.randint(10, 2000)
        batch.append(
            RequestRecord(
                instance=INSTANCE,
                completion_id=f"chatcmpl-{index:012d}",
                model=rng.choice(MODELS),
                endpoint="/v1/chat/completions",
                stream=rng.random() < 0.5,
                status=status,
                http_status=200 if ok else 404 if status == "error" else 499,
                error_code="" if ok else "model_not_found",
                prompt_tokens=prompt,
                cached_tokens=rng.randint(0, prompt),
                completion_tokens=rng.randint(0, 512) if ok else 0,
                finish_reason="stop" if ok else "",
                queue_wait_ms=rng.uniform(0, 50),
                ttft_ms=rng.lognormvariate(4, 0.8) if ok else None,
                duration_ms=rng.uniform(100, 20000),
                tokens_per_second=rng.uniform(40, 160) if ok else None,
                client_address="127.0.0.1",
                user_agent="bench",
                api_key=rng.choice(API_KEYS),
                created_at=now - timedelta(seconds=rng.uniform(0, 30 * 86400)),
            )
        )
        if len(batch) == BATCH:
            RequestRecord.objects.bulk_create(batch)
            batch = []
    RequestRecord.objects.bulk_create(batch)


def render_ms(client: Client, page: str) -> float:
    started = time.perf_counter()
    response = client.get(page)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, f"{page}: HTTP {response.status_code}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="renders after the first, for the median")
    parser.add_argument("--page", action="append", help="a page to time (repeatable; default: PAGES)")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="llamasite-console-bench-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # a million records: 360 MB
    write_scratch_config(scratch)
    setup_django(scratch / "bench.sqlite3")
    logging.disable(logging.WARNING)  # a page's warnings (none expected) would mix with the figures

    from django.contrib.auth.models import User
    from django.test import Client

    from inference.selectors.model_table import usage_today_query
    from inference.services import records as record_services

    started = time.perf_counter()
    fill(options.records)
    filled = time.perf_counter() - started
    started = time.perf_counter()
    record_services.daily_usage_rebuild()
    rolled = time.perf_counter() - started
    client = Client(SERVER_NAME="localhost")  # one of server.allowed_hosts' defaults
    client.force_login(User.objects.create_superuser("bench", "bench@example.com", "bench"))

    print(
        f"records: {options.records:,} over 30 days, {len(MODELS)} models, {len(API_KEYS)} keys "
        f"(bulk_create {filled:.1f} s, rollups {rolled:.1f} s)"
    )
    print(f"the models page's usage query: {usage_today_query(INSTANCE, MODELS).explain()}")
    render_ms(client, "/admin/password_change/")  # Django's own first-request costs, so that they are no page's
    slow = []
    for page in options.page or PAGES:
        first = render_ms(client, page)
        again = statistics.median(render_ms(client, page) for _ in range(max(1, options.runs)))
        print(f"{page}: first render {first:.0f} ms, then median of {options.runs}: {again:.0f} ms")
        if first > SLOW_MS:
            slow.append(page)
    if slow:
        print(f"over {SLOW_MS} ms: {', '.join(slow)}")
    sys.exit(1 if slow else 0)


if __name__ == "__main__":
    main()
