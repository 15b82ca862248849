"""Who may use /v1/*: API keys (stored hashed), the models they may use, their quotas."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from inference.config import get_config
from inference.errors import InvalidApiKey, QuotaExceeded
from inference.models import ApiKey, RequestRecord

SECRET_PREFIX = "sk-"
PREFIX_LENGTH = 11  # "sk-" and 8 characters: shown, and looked up by


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


async def api_key_check(authorization: str | None) -> ApiKey | None:
    """The request's key. Without `server.require_api_key`, a missing or unknown key is fine
    (the SDKs always send one) but a known one is still attributed; with it, it is a 401."""
    secret = bearer_token(authorization)
    key = None
    if secret and secret.startswith(SECRET_PREFIX):
        key = await sync_to_async(api_key_find, thread_sensitive=False)(secret)
    if key is None and get_config().server.api_key_required:
        raise InvalidApiKey(
            "Missing, unknown or revoked API key: send 'Authorization: Bearer <key>' with a key "
            "from `manage.py apikey create`."
        )
    return key


class _RequestWindows:
    """Each key's requests in the last minute (this process)."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def admit(self, key: ApiKey) -> None:
        if not key.requests_per_minute:
            return
        now = time.monotonic()
        with self._lock:
            times = self._times[key.prefix]
            while times and now - times[0] >= 60:
                times.popleft()
            if len(times) >= key.requests_per_minute:
                raise QuotaExceeded(
                    f"API key {key.prefix}… may make {key.requests_per_minute} requests a minute.",
                    retry_after=math.ceil(60 - (now - times[0])),
                )
            times.append(now)


_windows = _RequestWindows()


def _tokens_today(prefix: str, since: datetime) -> int:
    records = RequestRecord.objects.filter(api_key=prefix, created_at__gte=since)
    return records.aggregate(total=Coalesce(Sum(F("prompt_tokens") + F("completion_tokens")), 0))["total"]


async def quota_check(key: ApiKey | None) -> None:
    """429 if the key is over its requests per minute or its tokens today."""
    if key is None:
        return
    _windows.admit(key)
    if key.tokens_per_day:
        now = datetime.now(UTC)
        midnight = datetime.combine(now.date(), datetime.min.time(), UTC)
        used = await sync_to_async(_tokens_today, thread_sensitive=False)(key.prefix, midnight)
        if used >= key.tokens_per_day:
            tomorrow = midnight + timedelta(days=1)
            raise QuotaExceeded(
                f"API key {key.prefix}… has used its {key.tokens_per_day} tokens for today (UTC).",
                retry_after=math.ceil((tomorrow - now).total_seconds()),
            )
