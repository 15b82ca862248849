"""`manage.py reload`: make the running server re-read config.json and rediscover its models."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from inference.management.admin_client import admin_post


class Command(BaseCommand):
    help = "Make the running server re-read config.json and rediscover the models directory."
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        result = admin_post("/admin/reload", {"reason": "cli"})
        for change in ("added", "removed", "changed"):
            self.stdout.write(f"{change}: {', '.join(result[change]) or 'none'}")
