"""A key's quotas: checked as its request arrives (requests per minute, counted by
`inference.access.windows`; tokens per day, from its records and what its requests in flight here
have claimed), where they stand as that request found them (the rate-limit headers), and the 429
that carries them as far as they were checked.

While the database cannot be reached, tokens per day are not checked: a local server had rather
serve than refuse (logged once as the outage begins and once as it ends, by the key checks).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from inference.access.keys import Unreachable, database_read
from inference.access.windows import SharedWindows, windows_for
from inference.errors import RetryLater
from inference.models import ApiKey, RequestRecord

QUOTA_WARNING_SHARE = 0.8  # of tokens_per_day: a key past it is logged (once a day) and shown on the dashboard


@dataclass(frozen=True)
class Allowance:
    """One quota of a key as a request found it: its limit, what is left, when it is whole."""

    limit: int
    remaining: int
    resets_at: datetime  # requests: when the oldest request in the window leaves it; tokens: UTC midnight


@dataclass(frozen=True)
class Quotas:
    """A key's quotas as its request was checked (the rate-limit headers); None: no such quota,
    or not checked (tokens while the database cannot be reached). `window`: the request's share
    of the tokens left, which its jobs claim from."""

    requests: Allowance | None = None
    tokens: Allowance | None = None
    window: TokenWindow | None = field(default=None, compare=False)


def seconds_to_midnight(now: datetime | None = None) -> int:
    """Seconds until tokens per day start again (UTC midnight), rounded up."""
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return math.ceil((midnight - now).total_seconds())


class TokenLedger:
    """The tokens that requests in flight have claimed, per key, in this process: what the key's
    records do not count yet. Any thread (claims come from the models' workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # claimed by requests whose records are not written yet
        self._claimed: dict[str, int] = {}  # claimed ever (only grows): what a window sees others take

    def snapshot(self, key: str) -> LedgerSnapshot:
        """Where `key` stands here, taken before its records are read: a claim released after
        this (its record written meanwhile) is then counted twice, never missed."""
        with self._lock:
            return LedgerSnapshot(self._held.get(key, 0), self._claimed.get(key, 0))

    def window(self, key: str, limit: int, used: int, before: LedgerSnapshot) -> TokenWindow | None:
        """What a request of `key` may spend, its records having counted `used` of `limit`
        today (read after `before`); None if nothing is left."""
        left = limit - used - before.held
        return TokenWindow(self, key, left, before.claimed) if left > 0 else None

    def held(self, key: str) -> int:
        with self._lock:
            return self._held.get(key, 0)


@dataclass(frozen=True)
class LedgerSnapshot:
    held: int
    claimed: int


class TokenWindow:
    """One request's share of its key's tokens for today: at most what was left when it was
    checked, less what other requests have claimed since. Its jobs claim from it once their
    prompts are known (`claim`); the claims are held until the request's record is written
    (`release`), and counted from there."""

    def __init__(self, ledger: TokenLedger, key: str, left: int, claimed_before: int) -> None:
        self._ledger, self._key = ledger, key
        self.left, self._claimed_before = left, claimed_before
        self.claimed = 0
        self._released = False

    def claim(self, wanted: int, least: int) -> int:
        """Claim up to `wanted` tokens, at least `least`: the tokens granted, or 0 (and nothing
        claimed) if fewer than `least` are left."""
        ledger = self._ledger
        with ledger._lock:
            others = ledger._claimed.get(self._key, 0) - self._claimed_before - self.claimed
            granted = min(wanted, self.left - others - self.claimed)
            if granted < least or self._released:
                return 0
            self.claimed += granted
            ledger._claimed[self._key] = ledger._claimed.get(self._key, 0) + granted
            ledger._held[self._key] = ledger._held.get(self._key, 0) + granted
            return granted

    def release(self) -> None:
        """The request's record is written (or will not be): its claims stop being held. Once."""
        ledger = self._ledger
        with ledger._lock:
            if self._released:
                return
            self._released = True
            held = ledger._held.get(self._key, 0) - self.claimed
            if held > 0:
                ledger._held[self._key] = held
            else:
                ledger._held.pop(self._key, None)


class QuotaExceeded(RetryLater):
    status = 429
    type = "rate_limit_error"
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int, quotas: Quotas | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.quotas = quotas  # where the key's quotas stand: the 429's rate-limit headers


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
