"""`manage.py models [--json]`: every model of the running server with its state (like `ollama
ps`), from its `GET /admin/models`; the console's models page shows the same table."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inference.management.admin_client import admin_get

Row = dict[str, Any]


def _state(row: Row) -> str:
    return f"loading {row['load_percent']}%" if row["load_percent"] is not None else row["state"]


def _memory(row: Row) -> str:
    return "?" if row["memory_mb"] is None else f"{row['memory_mb']:,} MB"


def _unloads_in(row: Row, now: datetime) -> str:
    """How long until the idle check unloads it; "never" for a loaded model it would not."""
    if row["state"] != "loaded":
        return "–"
    if row["expires_at"] is None:
        return "busy" if row["slots_busy"] or row["queued"] else "never"
    seconds = max(0, round((datetime.fromisoformat(row["expires_at"]) - now).total_seconds()))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _hit_rate(row: Row) -> str:
    return "–" if row["cache_hit_rate"] is None else f"{row['cache_hit_rate']:.0%}"


def columns(now: datetime) -> list[tuple[str, Callable[[Row], str]]]:
    return [
        ("NAME", lambda row: row["name"]),
        ("STATE", _state),
        ("MEMORY", _memory),
        ("CAN", lambda row: ",".join(row["capabilities"]) or "–"),
        ("SLOTS", lambda row: f"{row['slots_busy']}/{row['parallel']}"),
        ("QUEUE", lambda row: str(row["queued"])),
        ("UNLOADS IN", lambda row: _unloads_in(row, now)),
        ("PINNED", lambda row: "yes" if row["pinned"] else "no"),
        ("REQUESTS TODAY", lambda row: str(row["requests_today"])),
        ("TOKENS TODAY", lambda row: str(row["prompt_tokens_today"] + row["completion_tokens_today"])),
        ("CACHE HITS", _hit_rate),
        ("LAST LOAD", lambda row: row["last_load_reason"] or "–"),
    ]


def table_lines(table: dict[str, Any], now: datetime) -> list[str]:
    """The table as aligned text lines, a memory line below."""
    chosen = columns(now)
    cells = [[title for title, _ in chosen]] + [[cell(row) for _, cell in chosen] for row in table["models"]]
    widths = [max(len(line[index]) for line in cells) for index in range(len(chosen))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    budget = table["memory_budget_mb"]
    lines.append(
        f"memory (estimated) of the loaded models: {table['memory_loaded_mb']:,} MB"
        + (f" of a {budget:,} MB budget (max_memory_mb)" if budget else ", no budget (max_memory_mb 0)")
    )
    return lines


class Command(BaseCommand):
    help = "List every model of the running server: state, memory, slots, queue, usage today."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the table as JSON (for scripts)")

    def handle(self, *args: Any, as_json: bool, **options: Any) -> None:
        table = admin_get("/admin/models")
        if as_json:
            self.stdout.write(json.dumps(table, indent=2))
            return
        for line in table_lines(table, datetime.now(UTC)):
            self.stdout.write(line)
