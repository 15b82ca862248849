"""Who may use /v1/*: API keys (stored hashed), the models they may use, their quotas.

While the database cannot be reached, keys verified in the last `server.api_key_cache_seconds`
are accepted from memory, a key that is not among them (when keys are required) gets a 503
naming the database, and tokens per day are not checked: a local server had rather serve than
refuse. Each outage is logged once as it begins and once as it ends.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from inference.config import get_config
from inference.connections import DATABASE_UNREACHABLE, error_line, on_fresh_connection
from inference.errors import DatabaseUnavailable, InvalidApiKey, QuotaExceeded
from inference.models import ApiKey, RequestRecord
from inference.quotas import Allowance, Quotas, TokenLedger, seconds_to_midnight

SECRET_PREFIX = "sk-"
PREFIX_LENGTH = 11  # "sk-" and 8 characters: shown, and looked up by
WINDOW_SECONDS = 60  # of requests_per_minute
QUOTA_WARNING_SHARE = 0.8  # of tokens_per_day: a key past it is logged (once a day) and shown on the dashboard
# While the database cannot be reached, one request a second tries it; the others are answered
# without waiting for it.
DATABASE_RETRY_SECONDS = 1.0

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _hashed(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_create(
    *, name: str, models: list[str] | None = None, requests_per_minute: int | None = None,
    tokens_per_day: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key, and its secret: shown this once, stored only hashed."""
    key = ApiKey(
        name=name,
        allowed_models=list(models or []),
        requests_per_minute=requests_per_minute,
        tokens_per_day=tokens_per_day,
    )
    secret = api_key_secret_assign(key)
    key.save()
    return key, secret


def api_key_secret_assign(key: ApiKey) -> str:
    """Give an unsaved key a fresh secret (its prefix and hash); returns the secret."""
    while True:
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        if not ApiKey.objects.filter(prefix=secret[:PREFIX_LENGTH]).exists():
            break
    key.prefix, key.hashed = secret[:PREFIX_LENGTH], _hashed(secret)
    return secret


def api_key_revoke(*, prefix: str) -> ApiKey:
    """Revoke the key with this prefix; raises ApiKey.DoesNotExist."""
    key = ApiKey.objects.get(prefix=prefix[:PREFIX_LENGTH])
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        key.save(update_fields=["revoked_at"])
    return key


def api_key_find(secret: str) -> ApiKey | None:
    """The live key whose secret this is (and note its use), or None."""
    key = ApiKey.objects.filter(prefix=secret[:PREFIX_LENGTH], revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.hashed, _hashed(secret)):
        return None
    now = datetime.now(UTC)
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (None: no such header)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def authorization_of(headers: Mapping[str, str]) -> str | None:
    """The request's credentials as an Authorization header: its own, or Anthropic's
    `x-api-key` (what the anthropic SDK and Claude Code send) as a bearer token."""
    if (authorization := headers.get("Authorization")) is not None:
        return authorization
    secret = headers.get("X-Api-Key")
    return f"Bearer {secret}" if secret is not None else None


async def api_key_check(authorization: str | None) -> ApiKey | None:
    """The request's key. Without `server.require_api_key`, a missing or unknown key is fine
    (the SDKs always send one) but a known one is still attributed; with it, it is a 401, or a
    503 if the database cannot be reached to tell (see the module)."""
    secret = bearer_token(authorization)
    key = None
    if secret and secret.startswith(SECRET_PREFIX):
        key = await _api_key_lookup(secret)
    if key is None and get_config().server.api_key_required:
        raise InvalidApiKey(
            "Missing, unknown or revoked API key: send 'Authorization: Bearer <key>' (or 'x-api-key: "
            "<key>') with a key from `manage.py apikey create`."
        )
    return key


async def _api_key_lookup(secret: str) -> ApiKey | None:
    hashed = _hashed(secret)
    try:
        key = await _database_read(lambda: api_key_find(secret))
    except _Unreachable:
        server = get_config().server
        key = _recent_keys.get(hashed, server.api_key_cache_seconds)
        if key is None and server.api_key_required:
            raise DatabaseUnavailable(
                "The database cannot be reached, so this API key cannot be checked (keys used in the "
                f"last {server.api_key_cache_seconds:g} s still work). Try again shortly.",
                retry_after=math.ceil(DATABASE_RETRY_SECONDS),
            ) from None
        return key
    _recent_keys.remember(hashed, key)
    return key


class _RecentKeys:
    """The keys verified lately, by their secret's hash, with when. Only keys that exist get in
    (an unknown secret never takes memory); a key found revoked or unknown leaves at once.
    Event loop only."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[float, ApiKey]] = {}

    def remember(self, hashed: str, key: ApiKey | None) -> None:
        if key is None:
            self._keys.pop(hashed, None)
        else:
            self._keys[hashed] = (time.monotonic(), key)

    def get(self, hashed: str, seconds: float) -> ApiKey | None:
        """The key of this hash if it was verified in the last `seconds`."""
        entry = self._keys.get(hashed)
        if entry is None or time.monotonic() - entry[0] > seconds:
            return None
        return entry[1]


class _Unreachable(Exception):
    """The database cannot be reached now."""


class _DatabaseOutage:
    """Whether the database failed the last time this module asked it, and when; logs once as
    an outage begins and once as it ends. Event loop only."""

    def __init__(self) -> None:
        self._failed_at: float | None = None

    def worth_asking(self) -> bool:
        return self._failed_at is None or time.monotonic() - self._failed_at >= DATABASE_RETRY_SECONDS

    def failed(self, error: Exception) -> None:
        if self._failed_at is None:
            logger.warning(
                "database unreachable for API key checks (%s): keys verified in the last %g s are "
                "accepted from memory, others get a 503; tokens per day are not checked until it is back",
                error_line(error), get_config().server.api_key_cache_seconds,
            )
        self._failed_at = time.monotonic()

    def answered(self) -> None:
        if self._failed_at is not None:
            logger.info("database is back: API keys and tokens per day are checked in it again")
            self._failed_at = None


_recent_keys = _RecentKeys()
_outage = _DatabaseOutage()


async def _database_read(query: Callable[[], T]) -> T:
    """`query()` on an executor thread, on a fresh connection; raises _Unreachable while the
    database cannot be reached, asking it at most once a second meanwhile."""
    if not _outage.worth_asking():
        raise _Unreachable
    try:
        result = await sync_to_async(on_fresh_connection, thread_sensitive=False)(query)
    except DATABASE_UNREACHABLE as error:
        _outage.failed(error)
        raise _Unreachable from None
    _outage.answered()
    return result


@dataclass(frozen=True)
class WindowCount:
    """A key's requests in the last minute, as a request was counted in (or refused)."""

    used: int  # requests in the window, this one included if it was counted
    frees_in: float  # seconds until the oldest of them leaves the window
    refused: bool


class _LocalWindows:
    """Each key's requests in the last minute, counted by this process."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def reserve(self, prefix: str, limit: int) -> WindowCount:
        """Count a request in, unless the window is full."""
        now = time.monotonic()
        with self._lock:
            times = self._times[prefix]
            while times and now - times[0] >= WINDOW_SECONDS:
                times.popleft()
            refused = len(times) >= limit
            if not refused:
                times.append(now)
            return WindowCount(len(times), WINDOW_SECONDS - (now - times[0]), refused)


# One atomic step in Redis, on Redis' clock (servers on several boxes need not agree on time):
# drop the entries older than the window, add this request unless it is full, and return
# {refused (1/0), requests in the window, milliseconds until its oldest entry leaves}.
_RESERVE_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local refused = 1
if redis.call('ZCARD', KEYS[1]) < limit then
    refused = 0
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], window)
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {refused, redis.call('ZCARD', KEYS[1]), tonumber(oldest[2]) + window - now}
"""


class _SharedWindows:
    """Each key's requests in the last minute, counted in the Redis that every server process
    shares (REDIS_URL); while it cannot be reached, this process counts alone."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._url = f"{parts.hostname}:{parts.port or 6379}"  # for logs: no password
        self._reserve = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).register_script(
            _RESERVE_SCRIPT
        )
        self._local = _LocalWindows()
        self._reachable = True

    def reserve(self, prefix: str, limit: int) -> WindowCount:
        try:
            refused, used, frees_in_ms = self._reserve(
                keys=[f"llamasite:rpm:{prefix}"], args=[WINDOW_SECONDS * 1000, limit, uuid.uuid4().hex]
            )
        except redis.RedisError as error:
            if self._reachable:
                logger.warning(
                    "Redis at %s cannot be reached (%s): requests per minute are counted by this process alone",
                    self._url, error,
                )
                self._reachable = False
            return self._local.reserve(prefix, limit)
        if not self._reachable:
            logger.info("Redis at %s is back: requests per minute are shared again", self._url)
            self._reachable = True
        return WindowCount(int(used), int(frees_in_ms) / 1000, bool(refused))


@functools.cache
def _windows(redis_url: str | None) -> _LocalWindows | _SharedWindows:
    return _SharedWindows(redis_url) if redis_url else _LocalWindows()


def _tokens_today(prefix: str, since: datetime) -> int:
    records = RequestRecord.objects.filter(api_key=prefix, created_at__gte=since)
    return records.aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]


async def _requests_per_minute_check(key: ApiKey, now: datetime) -> Allowance:
    windows = _windows(settings.REDIS_URL)
    limit = key.requests_per_minute
    if isinstance(windows, _SharedWindows):  # a network round trip: off the event loop
        count = await sync_to_async(windows.reserve, thread_sensitive=False)(key.prefix, limit)
    else:
        count = windows.reserve(key.prefix, limit)
    allowance = Allowance(limit, max(0, limit - count.used), now + timedelta(seconds=count.frees_in))
    if count.refused:
        raise QuotaExceeded(
            f"API key {key.prefix}… may make {limit} requests a minute.",
            retry_after=math.ceil(count.frees_in), quotas=Quotas(requests=allowance),
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
                key.prefix, key.name, used, key.tokens_per_day, 100 * used / key.tokens_per_day,
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
        used = await _database_read(lambda: _tokens_today(key.prefix, midnight))
    except _Unreachable:
        return Quotas(requests=requests)  # not checked until the database is back (logged once)
    _quota_warnings.note(key, used, now.date())
    window = token_ledger.window(key.prefix, key.tokens_per_day, used, before)
    tokens = Allowance(key.tokens_per_day, window.left if window else 0, midnight + timedelta(days=1))
    quotas = Quotas(requests=requests, tokens=tokens, window=window)
    if window is None:
        raise QuotaExceeded(
            f"API key {key.prefix}… has used its {key.tokens_per_day} tokens for today (UTC).",
            retry_after=seconds_to_midnight(now), quotas=quotas,
        )
    return quotas
