"""`manage.py serve`: run the server (daphne) on the configured host and port.

SIGTERM or SIGINT stop it gracefully: it stops listening, lets running requests finish (up to
model_manager.shutdown_grace_seconds), unloads the models and exits 0. A second signal stops
it at once.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import time
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

from inference.api.authentication import admin_token, admin_token_source
from inference.config import Config, ConfigError, ServerConfig, load_config, set_config
from inference.models import ApiKey
from inference.records.writer import writer
from inference.runtime.pool import ModelPool, model_pool
from inference.services.models import discovered_models_sync, models_preload

logger = logging.getLogger(__name__)

_GRACE_POLL_SECONDS = 0.1


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


def ensure_database_ready() -> None:
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        raise CommandError(f"cannot use the database: {exc}") from None
    if pending:
        raise CommandError("the database is not up to date: run `manage.py migrate` first")


def warn_about_access(server: ServerConfig) -> None:
    """Say loudly when the API is open to the network, or closed to everyone."""
    if server.loopback_only:
        return
    if not server.api_key_required:
        logger.warning(
            "!!! server.require_api_key is false and the server listens on %s: ANYONE who can reach "
            "this address can use the API. Create keys with `manage.py apikey create NAME` and "
            "remove require_api_key from config.json.",
            server.host,
        )
    elif not ApiKey.objects.filter(revoked_at__isnull=True).exists():
        logger.warning(
            "!!! the server listens on %s and requires API keys, but there are none: every /v1 request "
            "will be refused with 401. Create one with `manage.py apikey create NAME`.",
            server.host,
        )


PROXY_HEADERS = {
    "proxy_forwarded_address_header": "X-Forwarded-For",
    "proxy_forwarded_port_header": "X-Forwarded-Port",
    "proxy_forwarded_proto_header": "X-Forwarded-Proto",
}


def serve_with_graceful_shutdown(config: Config, pool: ModelPool) -> None:
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server
    from twisted.internet import reactor

    from llamasite.asgi import api_app, application

    class GracefulServer(Server):
        """Daphne, remembering its listening ports so that a shutdown can close them first."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.ports: list[Any] = []

        def listen_success(self, port: Any) -> None:
            self.ports.append(port)
            super().listen_success(port)

    preloading: list[asyncio.Task[list[str]]] = []  # holds the task while it runs

    def start_preloading() -> None:
        """Daphne calls this once it listens, its event loop set but not yet running: the
        preloads start with the loop, beside the first requests (they only wait on it)."""
        preloading.append(asyncio.get_event_loop().create_task(models_preload()))

    server = GracefulServer(
        application=application,
        endpoints=build_endpoint_description_strings(host=config.server.host, port=config.server.port),
        server_name="llamasite",
        signal_handlers=False,
        ready_callable=start_preloading,
        # Behind the TLS proxy, the client is the one the proxy names (records' client address).
        **(PROXY_HEADERS if config.server.behind_https_proxy else {}),
    )
    grace = config.model_manager.shutdown_grace_seconds
    stopping: dict[str, float] = {}

    def shut_down(signal_name: str) -> None:
        if stopping:
            logger.warning("%s again: stopping now", signal_name)
            server.stop()
            return
        stopping["deadline"] = time.monotonic() + grace
        logger.info("%s: finishing running requests (up to %g s), then stopping", signal_name, grace)
        for port in server.ports:
            port.stopListening()
        pool.stop_accepting()
        wait_for_requests()

    def wait_for_requests() -> None:
        if not pool.busy() and not api_app.answering:
            server.stop()
        elif time.monotonic() > stopping["deadline"]:
            logger.warning("grace period over: stopping with requests still running")
            server.stop()
        else:
            reactor.callLater(_GRACE_POLL_SECONDS, wait_for_requests)

    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(
            signal_number,
            lambda number, _frame: reactor.callFromThread(shut_down, signal.Signals(number).name),
        )
    # What is imported and set up by now lives as long as the process: frozen out of the cyclic
    # collector's reach, so that a full collection scans only what came since. Unfrozen, each
    # full collection stalled the event loop 60-90 ms (/health while schemas were built).
    gc.collect()
    gc.freeze()
    server.run()


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
        server = replace(
            config.server,
            host=host or config.server.host,
            port=port if port is not None else config.server.port,
        )
        config = replace(config, server=server)
        set_config(config)
        settings.ALLOWED_HOSTS = list(server.host_names)  # --host may name another address
        ensure_port_free(server.host, server.port)
        ensure_database_ready()
        warn_about_access(server)
        admin_token(create=True)
        logger.info("admin token: %s", admin_token_source())

        pool = model_pool()
        models = pool.catalog.available()
        discovered_models_sync(models=models)
        logger.info("models in %s: %s", config.model_manager.models_directory, ", ".join(models) or "none")
        logger.info("serving on http://%s:%d (config %s)", server.host, server.port, config.path)
        try:
            serve_with_graceful_shutdown(config, pool)
        finally:
            pool.shutdown()
            writer.close()  # after the unloads' records
            logger.info("stopped")
