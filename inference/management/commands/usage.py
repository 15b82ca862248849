"""`manage.py usage`: the usage summary of the dashboard, in the terminal or as JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.config import ConfigError, load_config
from inference.selectors import usage as usage_selectors
from inference.services import records as record_services

_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
COLUMNS = (
    ("model", "model", 32),
    ("requests", "requests", 9),
    ("errors", "errors", 7),
    ("cancelled", "cancelled", 10),
    ("prompt_tokens", "prompt tok", 11),
    ("completion_tokens", "compl. tok", 11),
    ("ttft_ms_p50", "TTFT p50 ms", 12),
    ("tokens_per_s_p50", "tok/s p50", 10),
)
JSON_KEYS = [key for key, _, _ in COLUMNS]
FIGURES = JSON_KEYS[1:]


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `24h`, `30m`, `2w`, or an ISO date/time (UTC)."""
    if match := _SINCE.match(text):
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--since {text!r}: use e.g. 7d, 24h, 30m, 2w or 2026-11-01") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Print request usage per model (as the dashboard does); prune or rebuild the records."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", default="7d", help="7d, 24h, 30m, 2w or an ISO date (default 7d)")
        parser.add_argument("--model", help="only this model")
        parser.add_argument("--key", help="only this API key (its prefix; '-' for requests without a key)")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument(
            "--prune", action="store_true", help="delete records older than records.usage_retention_days"
        )
        parser.add_argument(
            "--rebuild-rollups", action="store_true", help="recompute the daily totals from the records"
        )

    def handle(
        self,
        *args: Any,
        since: str,
        model: str | None,
        key: str | None,
        json: bool,
        prune: bool,
        rebuild_rollups: bool,
        **options: Any,
    ) -> None:
        if prune:
            try:
                days = load_config().records.usage_retention_days
            except ConfigError as exc:
                raise CommandError(str(exc)) from None
            deleted = record_services.request_records_prune(older_than_days=days)
            self.stdout.write(f"pruned {deleted} request records older than {days} days")
        if rebuild_rollups:
            self.stdout.write(f"rebuilt {record_services.daily_usage_rebuild()} daily usage rows")
        if prune or rebuild_rollups:
            return
        now = datetime.now(UTC)
        api_key = "" if key == "-" else key
        summary = usage_selectors.usage_summary(since=parse_since(since, now), until=now, model=model, api_key=api_key)
        if json:
            self.stdout.write(self._json(summary))
        else:
            self._table(summary)

    def _json(self, summary: usage_selectors.UsageSummary) -> str:
        return json.dumps(
            {
                "since": summary.since.isoformat(),
                "until": summary.until.isoformat(),
                "models": [{key: row[key] for key in JSON_KEYS} for row in summary.models],
                "keys": [
                    {"api_key": row["api_key"], "name": row["name"], **{key: row[key] for key in FIGURES}}
                    for row in summary.keys
                ],
                "total": {key: summary.total[key] for key in FIGURES},
            },
            indent=2,
        )

    def _table(self, summary: usage_selectors.UsageSummary) -> None:
        self.stdout.write(f"usage {summary.since:%Y-%m-%d %H:%M} – {summary.until:%Y-%m-%d %H:%M} UTC")
        self.stdout.write(
            "".join(title.rjust(width) if key != "model" else title.ljust(width) for key, title, width in COLUMNS)
        )
        for row in [*summary.models, {"model": "total", **summary.total}]:
            self._row(row)
        if any(row["api_key"] for row in summary.keys):
            self.stdout.write("per API key")
            for row in summary.keys:
                label = f"{row['name'] or '(deleted)'} {row['api_key']}…" if row["api_key"] else "(no key)"
                self._row({**row, "model": label})

    def _row(self, row: dict[str, Any]) -> None:
        cells = []
        for key, _, width in COLUMNS:
            value = row[key]
            text = "–" if value is None else str(value)
            cells.append(text.ljust(width) if key == "model" else text.rjust(width))
        self.stdout.write("".join(cells))
