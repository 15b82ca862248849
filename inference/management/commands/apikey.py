"""`manage.py apikey create|list|revoke`: the API keys clients send as `Authorization: Bearer`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.models import ApiKey
from inference.services import keys as key_services


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise CommandError(f"{text!r} is not a positive whole number")
    return int(text)


class Command(BaseCommand):
    help = "Create, list or revoke API keys (the secret is printed once, at creation)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="create|list|revoke")
        create = actions.add_parser("create", help="create a key and print its secret (once)")
        create.add_argument("name", help="who or what the key is for")
        create.add_argument("--models", default="", help="comma-separated models the key may use (default: all)")
        create.add_argument("--rpm", help="requests per minute (default: no limit)")
        create.add_argument("--tokens-per-day", help="prompt + completion tokens per UTC day (default: no limit)")
        actions.add_parser("list", help="list the keys (prefixes only)")
        revoke = actions.add_parser("revoke", help="revoke a key: its requests get 401 from now on")
        revoke.add_argument("prefix", help="the key's prefix, as `list` shows it (or the whole secret)")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        getattr(self, f"_{action}")(**options)

    def _create(self, *, name: str, models: str, rpm: str | None, tokens_per_day: str | None, **_: Any) -> None:
        key, secret = key_services.api_key_create(
            name=name,
            models=[model.strip() for model in models.split(",") if model.strip()],
            requests_per_minute=_positive(rpm) if rpm else None,
            tokens_per_day=_positive(tokens_per_day) if tokens_per_day else None,
        )
        self.stdout.write(secret)
        self.stderr.write(f"created API key {key.name!r} ({key.prefix}…); the secret above is not shown again")

    def _list(self, **_: Any) -> None:
        self.stdout.write(f"{'prefix':<14}{'name':<24}{'models':<24}{'rpm':>6}{'tokens/day':>12}  status")
        for key in ApiKey.objects.all():
            status = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            self.stdout.write(
                f"{key.prefix:<14}{key.name[:23]:<24}{(','.join(key.allowed_models) or 'all')[:23]:<24}"
                f"{key.requests_per_minute or '–':>6}{key.tokens_per_day or '–':>12}  {status}"
            )

    def _revoke(self, *, prefix: str, **_: Any) -> None:
        try:
            key = key_services.api_key_revoke(prefix=prefix)
        except ApiKey.DoesNotExist:
            raise CommandError(f"no API key has the prefix {prefix!r} (see `manage.py apikey list`)") from None
        self.stdout.write(f"revoked API key {key.name!r} ({key.prefix}…)")
