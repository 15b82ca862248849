"""API keys: created (the secret shown once, stored hashed) and revoked."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from inference.access.keys import PREFIX_LENGTH, SECRET_PREFIX, hashed
from inference.models import ApiKey

logger = logging.getLogger(__name__)


def api_key_create(
    *,
    name: str,
    models: list[str] | None = None,
    requests_per_minute: int | None = None,
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
    key.prefix, key.hashed = secret[:PREFIX_LENGTH], hashed(secret)
    return secret


def api_key_revoke(*, prefix: str) -> ApiKey:
    """Revoke the key with this prefix; raises ApiKey.DoesNotExist."""
    key = ApiKey.objects.get(prefix=prefix[:PREFIX_LENGTH])
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        key.save(update_fields=["revoked_at"])
    return key
