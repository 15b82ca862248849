"""A key's limits, checked as its request arrives: requests per minute (`inference.access.windows`)
and tokens per day (its records, and what its requests in flight here have claimed). A 429
carries the quotas as far as they were checked.

While the database cannot be reached, tokens per day are not checked: a local server had rather
serve than refuse (logged once as the outage begins and once as it ends, by the key checks).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from inference.access.keys import Unreachable, database_read
from inference.access.quotas import (
    QUOTA_WARNING_SHARE,
    Allowance,
    QuotaExceeded,
    Quotas,
    TokenLedger,
    seconds_to_midnight,
)
from inference.access.windows import SharedWindows, windows_for
from inference.models import ApiKey, RequestRecord

logger = logging.getLogger(__name__)


def _tokens_today(prefix: str, since: datetime) -> int:
    records = RequestRecord.objects.filter(api_key=prefix, created_at__gte=since)
    return records.aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]


async def _requests_per_minute_check(key: ApiKey, now: datetime) -> Allowance:
    windows = windows_for(settings.REDIS_URL)
    limit = key.requests_per_minute
    if isinstance(windows, SharedWindows):  # a network round trip: off the event loop
        count = await sync_to_async(windows.reserve, thread_sensitive=False)(key.prefix, limit)
    else:
        count = windows.reserve(key.prefix, limit)
    allowance = Allowance(limit, max(0, limit - count.used), now + timedelta(seconds=count.frees_in))
    if count.refused:
        raise QuotaExceeded(
            f"API key {key.prefix}… may make {limit} requests a minute.",
            retry_after=math.ceil(count.frees_in),
            quotas=Quotas(requests=allowance),
        )
    return allowance


class _QuotaWarnings:
    """Which keys were logged as past QUOTA_WARNING_SHARE of their tokens, per UTC day: once
    each per day in this process. Event loop only."""

    def __init__(self) -> None:
        self._day: date | None = None
        self._warned: set[str] = set()

    def note(self, key: ApiKey, used: int, day: date) -> None:
        if used < QUOTA_WARNING_SHARE * key.tokens_per_day:
            return
        if day != self._day:
            self._day, self._warned = day, set()
        if key.prefix not in self._warned:
            self._warned.add(key.prefix)
            logger.warning(
                "API key %s… (%s) has used %d of its %d tokens for today (UTC), %.0f%%",
                key.prefix,
                key.name,
                used,
                key.tokens_per_day,
                100 * used / key.tokens_per_day,
            )


_quota_warnings = _QuotaWarnings()


token_ledger = TokenLedger()  # this process's requests in flight, by key


async def quota_check(key: ApiKey | None) -> Quotas | None:
    """429 if the key is over its requests per minute or its tokens today (not checked while the
    database cannot be reached); else where its quotas stand (None: a key without quotas, or no
    key), with the request's window on the tokens left: the tokens its records count and the
    tokens its requests in flight here have claimed are both spent. The 429 carries them too,
    as far as they were checked."""
    if key is None or not (key.requests_per_minute or key.tokens_per_day):
        return None
    now = datetime.now(UTC)
    requests = await _requests_per_minute_check(key, now) if key.requests_per_minute else None
    if not key.tokens_per_day:
        return Quotas(requests=requests)
    midnight = datetime.combine(now.date(), datetime.min.time(), UTC)
    before = token_ledger.snapshot(key.prefix)
    try:
        used = await database_read(lambda: _tokens_today(key.prefix, midnight))
    except Unreachable:
        return Quotas(requests=requests)  # not checked until the database is back (logged once)
    _quota_warnings.note(key, used, now.date())
    window = token_ledger.window(key.prefix, key.tokens_per_day, used, before)
    tokens = Allowance(key.tokens_per_day, window.left if window else 0, midnight + timedelta(days=1))
    quotas = Quotas(requests=requests, tokens=tokens, window=window)
    if window is None:
        raise QuotaExceeded(
            f"API key {key.prefix}… has used its {key.tokens_per_day} tokens for today (UTC).",
            retry_after=seconds_to_midnight(now),
            quotas=quotas,
        )
    return quotas
