"""`manage.py reaper [--once]`: run the running server's idle check, once or every check_interval."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from inference.config import get_config
from inference.management.admin_client import admin_post


class Command(BaseCommand):
    help = "Unload the running server's idle models now (--once) or every check_interval seconds."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="check once and exit")

    def handle(self, *args: Any, once: bool, **options: Any) -> None:
        while True:
            unloaded = admin_post("/admin/reap")["unloaded"]
            if once or unloaded:
                self.stdout.write(f"unloaded: {', '.join(unloaded) or 'nothing'}")
                self.stdout.flush()
            if once:
                return
            try:
                time.sleep(get_config().model_manager.check_interval)
            except KeyboardInterrupt:
                return
