"""Who may use /v1/*: API keys (stored hashed), the models they may use, their quotas.

While the database cannot be reached, keys verified in the last `server.api_key_cache_seconds`
are accepted from memory, a key that is not among them (when keys are required) gets a 503
naming the database, and tokens per day are not checked: a local server had rather serve than
refuse. Each outage is logged once as it begins and once as it ends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from asgiref.sync import sync_to_async

from inference.config import get_config
from inference.connections import DATABASE_UNREACHABLE, error_line, on_fresh_connection
from inference.errors import DatabaseUnavailable, InvalidApiKey
from inference.models import ApiKey

SECRET_PREFIX = "sk-"
PREFIX_LENGTH = 11  # "sk-" and 8 characters: shown, and looked up by
# While the database cannot be reached, one request a second tries it; the others are answered
# without waiting for it.
DATABASE_RETRY_SECONDS = 1.0

logger = logging.getLogger(__name__)

T = TypeVar("T")


def hashed(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_find(secret: str) -> ApiKey | None:
    """The live key whose secret this is (and note its use), or None."""
    key = ApiKey.objects.filter(prefix=secret[:PREFIX_LENGTH], revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.hashed, hashed(secret)):
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
    digest = hashed(secret)
    try:
        key = await database_read(lambda: api_key_find(secret))
    except Unreachable:
        server = get_config().server
        key = _recent_keys.get(digest, server.api_key_cache_seconds)
        if key is None and server.api_key_required:
            raise DatabaseUnavailable(
                "The database cannot be reached, so this API key cannot be checked (keys used in the "
                f"last {server.api_key_cache_seconds:g} s still work). Try again shortly.",
                retry_after=math.ceil(DATABASE_RETRY_SECONDS),
            ) from None
        return key
    _recent_keys.remember(digest, key)
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


class Unreachable(Exception):
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
                error_line(error),
                get_config().server.api_key_cache_seconds,
            )
        self._failed_at = time.monotonic()

    def answered(self) -> None:
        if self._failed_at is not None:
            logger.info("database is back: API keys and tokens per day are checked in it again")
            self._failed_at = None


_recent_keys = _RecentKeys()
_outage = _DatabaseOutage()


async def database_read(query: Callable[[], T]) -> T:
    """`query()` on an executor thread, on a fresh connection; raises Unreachable while the
    database cannot be reached, asking it at most once a second meanwhile (the key checks and
    the token quotas share what this process knows of an outage)."""
    if not _outage.worth_asking():
        raise Unreachable
    try:
        result = await sync_to_async(on_fresh_connection, thread_sensitive=False)(query)
    except DATABASE_UNREACHABLE as error:
        _outage.failed(error)
        raise Unreachable from None
    _outage.answered()
    return result
