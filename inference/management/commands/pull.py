"""`manage.py pull URL [--name NAME] [--sha256 HEX]`: download a GGUF model into the models
directory, then have the running server discover it."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.config import ConfigError, load_config
from inference.management.admin_client import admin_post
from inference.management.progress import TerminalProgress
from inference.pulling import PullError, human_bytes, plan_pull, pull


class Command(BaseCommand):
    help = (
        "Download a GGUF model (http(s):// or hf://owner/repo/file.gguf) into the models directory, "
        "resumably, verify it, and have the running server discover it."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="http(s) URL of a .gguf file, or hf://owner/repo/file.gguf")
        parser.add_argument("--name", help="the model's name (default: the file name without .gguf)")
        parser.add_argument("--sha256", help="the file's expected sha256 (64 hex digits)")

    def handle(self, *args: Any, url: str, name: str | None, sha256: str | None, **options: Any) -> None:
        try:
            config = load_config().model_manager
            plan = plan_pull(
                url=url, directory=config.models_directory, name=name, sha256=sha256, max_mb=config.max_pull_mb
            )
        except (ConfigError, PullError) as exc:
            raise CommandError(str(exc)) from None
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would break the bar
        progress = TerminalProgress(self.stderr, plan.name)
        try:
            pulled = pull(plan, on_progress=progress)
        except PullError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(f"interrupted: {plan.part.name} is kept, the same command resumes it") from None
        finally:
            progress.close()
        resumed = f", resumed at {human_bytes(pulled.resumed_from)}" if pulled.resumed_from else ""
        checked = ", sha256 verified" if pulled.sha256 else ""
        self.stdout.write(
            f"pulled {pulled.name} ({human_bytes(pulled.size_bytes)}{resumed}{checked}) into {pulled.path}"
        )
        self._discover(pulled.name)

    def _discover(self, name: str) -> None:
        try:
            changes = admin_post("/admin/reload", {"reason": "cli"})
        except CommandError as exc:
            self.stdout.write(f"{name} will be listed when the server starts (the server is not reachable now: {exc})")
            return
        if name in changes["added"] + changes["changed"]:
            self.stdout.write(f"the running server now lists {name}")
        else:
            self.stdout.write(
                f"the running server reloaded but does not list {name}: does it use another models directory?"
            )
