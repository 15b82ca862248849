"""Reads of the request records: usage summaries, the most requested models, keys near their token quota."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from django.db.models import Count, F, QuerySet, Sum

from inference.access.quotas import QUOTA_WARNING_SHARE
from inference.models import ApiKey, DailyUsage, RequestRecord


def most_requested_models(*, since: datetime, instance: str) -> list[str]:
    """The models this instance served requests for since then, the most requested first (ties
    by name), for `model_manager.preload: "auto"`."""
    counts = (
        RequestRecord.objects.filter(instance=instance, created_at__gte=since)
        .exclude(model="")
        .values("model")
        .annotate(requests=Count("id"))
        .order_by("-requests", "model")
    )
    return [row["model"] for row in counts]


# Ranges longer than this are summarised from the daily rollups (whole UTC days), shorter ones
# from the request records themselves.
ROLLUP_THRESHOLD = timedelta(days=2)


@dataclass
class UsageSummary:
    since: datetime
    until: datetime
    bucket: timedelta
    from_rollups: bool
    total: dict[str, Any]
    models: list[dict[str, Any]]  # each with its "model"
    keys: list[dict[str, Any]]  # each with its "api_key" prefix ("": no key) and "name"
    series: list[dict[str, Any]]  # per bucket: "start", the figures, and "by_model" requests


def _bucket_size(span: timedelta) -> timedelta:
    for size in (timedelta(minutes=2), timedelta(minutes=10), timedelta(hours=1), timedelta(hours=2)):
        if span / size <= 36:
            return size
    return timedelta(days=1)


def usage_summary(
    *, since: datetime, until: datetime, model: str | None = None, api_key: str | None = None
) -> UsageSummary:
    """Requests, tokens, error and cancel rates, TTFT and speed percentiles over a range: in
    total, per model, per API key, and per time bucket (days when the range is long)."""
    from_rollups = until - since > ROLLUP_THRESHOLD
    if from_rollups:
        since = datetime.combine(since.astimezone(UTC).date(), clock_time(), UTC)
        bucket = timedelta(days=1)
    else:
        bucket = _bucket_size(until - since)
    tallies: dict[tuple[datetime, str, str], DailyUsage] = defaultdict(DailyUsage)
    if from_rollups:
        for row in _rollups(since, until, model, api_key):
            tallies[(datetime.combine(row.day, clock_time(), UTC), row.model, row.api_key)].count_usage(row)
    else:
        for created, model_name, key, *values in _record_values(since, until, model, api_key):
            start = since + (created - since) // bucket * bucket
            tallies[(start, model_name, key)].count_request(*values)
    return _summarise(since, until, bucket, from_rollups, tallies)


def _rollups(since: datetime, until: datetime, model: str | None, api_key: str | None) -> QuerySet[DailyUsage]:
    rows = DailyUsage.objects.filter(day__gte=since.date(), day__lte=until.astimezone(UTC).date())
    if model:
        rows = rows.filter(model=model)
    return rows if api_key is None else rows.filter(api_key=api_key)


def _record_values(since: datetime, until: datetime, model: str | None, api_key: str | None) -> Iterable[tuple]:
    records = records_in_range(since=since, until=until, model=model, api_key=api_key)
    return records.values_list("created_at", "model", "api_key", *DailyUsage.COUNTED_COLUMNS).iterator(chunk_size=5000)


def records_in_range(
    *, since: datetime, until: datetime, model: str | None = None, api_key: str | None = None
) -> QuerySet[RequestRecord]:
    records = RequestRecord.objects.filter(created_at__gte=since, created_at__lt=until)
    if model:
        records = records.filter(model=model)
    return records if api_key is None else records.filter(api_key=api_key)


def _summarise(
    since: datetime,
    until: datetime,
    bucket: timedelta,
    from_rollups: bool,
    tallies: dict[tuple[datetime, str, str], DailyUsage],
) -> UsageSummary:
    """Totals per model, per key, per time bucket and overall (unsaved DailyUsage rows as tallies)."""
    total = DailyUsage()
    per_model: dict[str, DailyUsage] = defaultdict(DailyUsage)
    per_key: dict[str, DailyUsage] = defaultdict(DailyUsage)
    per_bucket: dict[datetime, DailyUsage] = defaultdict(DailyUsage)
    bucket_models: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (start, model, key), tally in tallies.items():
        total.count_usage(tally)
        per_model[model].count_usage(tally)
        per_key[key].count_usage(tally)
        per_bucket[start].count_usage(tally)
        bucket_models[start][model] += tally.requests
    key_names = dict(ApiKey.objects.filter(prefix__in=per_key).values_list("prefix", "name"))
    starts = []
    start = since
    while start < until:
        starts.append(start)
        start += bucket
    return UsageSummary(
        since=since,
        until=until,
        bucket=bucket,
        from_rollups=from_rollups,
        total=total.figures(),
        models=[{"model": name, **per_model[name].figures()} for name in sorted(per_model)],
        keys=[
            {"api_key": prefix, "name": key_names.get(prefix, ""), **per_key[prefix].figures()}
            for prefix in sorted(per_key)
        ],
        series=[
            {"start": start, **per_bucket[start].figures(), "by_model": dict(bucket_models.get(start, {}))}
            for start in starts
        ],
    )


def slowest_requests(
    *, since: datetime, until: datetime, model: str | None = None, api_key: str | None = None, limit: int = 10
) -> list[RequestRecord]:
    records = records_in_range(since=since, until=until, model=model, api_key=api_key)
    return list(records.filter(status=RequestRecord.Status.OK).order_by("-duration_ms")[:limit])


def failed_requests(
    *, since: datetime, until: datetime, model: str | None = None, api_key: str | None = None, limit: int = 20
) -> list[RequestRecord]:
    records = records_in_range(since=since, until=until, model=model, api_key=api_key)
    return list(records.exclude(status=RequestRecord.Status.OK).order_by("-created_at")[:limit])


def recorded_models() -> list[str]:
    """Every model that has usage."""
    return sorted(set(DailyUsage.objects.values_list("model", flat=True).distinct()))


def recorded_api_keys() -> list[tuple[str, str]]:
    """(prefix, name) of every API key that has usage, and of every key that exists."""
    used = set(DailyUsage.objects.exclude(api_key="").values_list("api_key", flat=True).distinct())
    names = dict(ApiKey.objects.values_list("prefix", "name"))
    return sorted(((prefix, names.get(prefix, "")) for prefix in used | set(names)), key=lambda k: (k[1], k[0]))


@dataclass(frozen=True)
class QuotaUse:
    name: str
    prefix: str
    used: int  # tokens today (UTC), on every server
    limit: int  # tokens_per_day

    @property
    def percent(self) -> int:
        return int(100 * self.used / self.limit)


def api_keys_near_token_quota(*, day: date, share: float = QUOTA_WARNING_SHARE) -> list[QuotaUse]:
    """The live keys with a daily token quota that have used more than `share` of it on that
    UTC day (from the daily totals), the fullest first."""
    limits = {
        prefix: (name, limit)
        for prefix, name, limit in ApiKey.objects.filter(
            revoked_at__isnull=True, tokens_per_day__isnull=False
        ).values_list("prefix", "name", "tokens_per_day")
    }
    used = (
        DailyUsage.objects.filter(day=day, api_key__in=list(limits))
        .values("api_key")
        .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
    )
    near = [
        QuotaUse(limits[row["api_key"]][0], row["api_key"], row["tokens"], limits[row["api_key"]][1])
        for row in used
        if row["tokens"] >= share * limits[row["api_key"]][1]
    ]
    return sorted(near, key=lambda use: (-use.used / use.limit, use.name))
