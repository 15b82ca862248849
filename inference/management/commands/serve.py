"""`manage.py serve`: run the server (daphne) on the configured host and port."""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.config import ConfigError, load_config, set_config
from inference.manager import model_manager

logger = logging.getLogger(__name__)


def ensure_port_free(host: str, port: int) -> None:
    """Fail early, in one line, if the address cannot be listened on."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself does
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise CommandError(f"cannot listen on {host}:{port}: {reason}") from None


class Command(BaseCommand):
    help = "Serve the OpenAI-compatible API with daphne on server.host:server.port from config.json."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", help="address to listen on (overrides server.host)")
        parser.add_argument("--port", type=int, help="port to listen on (overrides server.port)")

    def handle(self, *args: Any, host: str | None, port: int | None, **options: Any) -> None:
        try:
            config = load_config()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        set_config(config)
        host = host or config.server.host
        port = port if port is not None else config.server.port
        ensure_port_free(host, port)

        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server

        from llamasite.asgi import application

        manager = model_manager()
        models = manager.available()
        logger.info(
            "models in %s: %s", config.model_manager.models_directory, ", ".join(models) or "none"
        )
        server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            server_name="llamasite",
        )
        logger.info("serving on http://%s:%d (config %s)", host, port, config.path)
        try:
            server.run()
        finally:
            manager.shutdown()
