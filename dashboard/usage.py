"""Usage pages for staff: a summary with charts over a chosen range, the live feed, CSV export."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from dashboard.charts import PALETTE, Series, horizontal_bars, lines, stacked_bars
from inference.access.quotas import QUOTA_WARNING_SHARE
from inference.selectors import usage as usage_selectors

RANGES = {
    "hour": ("Last hour", timedelta(hours=1)),
    "day": ("Last day", timedelta(days=1)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_RANGE = "day"


def _moment(text: str | None, *, end: bool) -> datetime | None:
    """A custom range bound: a date (whole day) or a date and time, in UTC."""
    if not text:
        return None
    moment = parse_datetime(text)
    if moment is None and (day := parse_date(text)):
        moment = datetime.combine(day, datetime.min.time()) + (timedelta(days=1) if end else timedelta())
    if moment is not None and timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment


def chosen_range(params: Any) -> tuple[str, datetime, datetime]:
    """The range asked for: a named one, or custom `start`/`end`; the last day otherwise."""
    key = params.get("range", DEFAULT_RANGE)
    now = timezone.now()
    if key == "custom":
        since, until = _moment(params.get("start"), end=False), _moment(params.get("end"), end=True)
        if since and since < (until := until or now):
            return key, since, until
        key = DEFAULT_RANGE
    if key not in RANGES:
        key = DEFAULT_RANGE
    return key, now - RANGES[key][1], now


def _label(start: datetime, bucket: timedelta) -> str:
    return start.strftime("%b %d" if bucket >= timedelta(days=1) else "%H:%M")


def usage_charts(summary: usage_selectors.UsageSummary) -> list[str]:
    labels = [_label(point["start"], summary.bucket) for point in summary.series]
    series = summary.series

    def column(key: str) -> list[Any]:
        return [point[key] for point in series]

    ok = [p["requests"] - p["errors"] - p["cancelled"] for p in series]
    return [
        stacked_bars(
            "requests",
            "Requests",
            labels,
            [
                Series("ok", ok, PALETTE[0]),
                Series("errors", column("errors"), PALETTE[1]),
                Series("cancelled", column("cancelled"), PALETTE[2]),
            ],
        ),
        stacked_bars(
            "tokens",
            "Tokens",
            labels,
            [
                Series("prompt", column("prompt_tokens"), PALETTE[5]),
                Series("completion", column("completion_tokens"), PALETTE[3]),
            ],
        ),
        lines(
            "ttft",
            "Time to first token",
            labels,
            [Series("p50", column("ttft_ms_p50"), PALETTE[0]), Series("p95", column("ttft_ms_p95"), PALETTE[4])],
            unit="ms",
        ),
        lines(
            "speed",
            "Generation speed (median)",
            labels,
            [Series("tokens/s", column("tokens_per_s_p50"), PALETTE[3])],
            unit="tokens/s",
        ),
        horizontal_bars(
            "model-requests",
            "Requests per model",
            sorted(((m["model"] or "(none)", m["requests"]) for m in summary.models), key=lambda r: -r[1]),
        ),
        horizontal_bars(
            "model-tokens",
            "Tokens per model",
            sorted(
                ((m["model"] or "(none)", m["prompt_tokens"] + m["completion_tokens"]) for m in summary.models),
                key=lambda r: -r[1],
            ),
        ),
    ]


NO_KEY = "-"  # the key filter's value for requests made without a key


def chosen_filters(query: QueryDict) -> dict[str, str | None]:
    """The model and API key (prefix; "-" for requests without one) to narrow the page to."""
    api_key = query.get("key") or None
    return {"model": query.get("model") or None, "api_key": "" if api_key == NO_KEY else api_key}


@staff_member_required
def index(request: HttpRequest) -> HttpResponse:
    range_name, since, until = chosen_range(request.GET)
    filters = chosen_filters(request.GET)
    summary = usage_selectors.usage_summary(since=since, until=until, **filters)
    context = {
        "ranges": {name: label for name, (label, _) in RANGES.items()},
        "range": range_name,
        "since": since,
        "until": until,
        "model": filters["model"] or "",
        "models": usage_selectors.recorded_models(),
        "key": request.GET.get("key", ""),
        "keys": usage_selectors.recorded_api_keys(),
        "no_key": NO_KEY,
        "summary": summary,
        "charts": usage_charts(summary),
        "slowest": usage_selectors.slowest_requests(since=since, until=until, **filters),
        "failed": usage_selectors.failed_requests(since=since, until=until, **filters),
        "near_quota": usage_selectors.api_keys_near_token_quota(day=timezone.now().astimezone(UTC).date()),
        "quota_warning_percent": round(100 * QUOTA_WARNING_SHARE),
        "query": request.GET.urlencode(),
    }
    return render(request, "dashboard/index.html", context)


EXPORT_COLUMNS = (
    "created_at",
    "instance",
    "completion_id",
    "model",
    "endpoint",
    "stream",
    "status",
    "http_status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "queue_wait_ms",
    "load_ms",
    "ttft_ms",
    "duration_ms",
    "tokens_per_second",
    "client_address",
    "user_agent",
    "api_key",
)


class _Echo:
    def write(self, value: str) -> str:
        return value


@staff_member_required
def export_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The request records of the chosen range as CSV, streamed row by row."""
    _, since, until = chosen_range(request.GET)
    records = usage_selectors.records_in_range(since=since, until=until, **chosen_filters(request.GET))
    writer = csv.writer(_Echo())

    def rows() -> Iterator[str]:
        yield writer.writerow(EXPORT_COLUMNS)
        for values in records.order_by("created_at").values_list(*EXPORT_COLUMNS).iterator(chunk_size=5000):
            yield writer.writerow(values)

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    name = f"llamasite-requests-{since:%Y%m%d%H%M}-{until:%Y%m%d%H%M}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
