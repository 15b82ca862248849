"""`manage.py unload NAME|all`: unload models from the running server."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inference.management.admin_client import admin_post


class Command(BaseCommand):
    help = "Unload a model (or 'all') from the running server; busy ones after their requests."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="model name, or 'all'")

    def handle(self, *args: Any, model: str, **options: Any) -> None:
        result = admin_post("/admin/unload", {"model": model, "reason": "cli"})
        self.stdout.write(f"unloaded: {', '.join(result['unloaded']) or 'nothing'}")
        if result["pending"]:
            self.stdout.write(f"unloading after their running requests: {', '.join(result['pending'])}")
