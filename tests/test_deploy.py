"""deploy/: install.sh and uninstall.sh on a copy of the checkout in a throwaway HOME
(--no-systemd), the systemd unit they write, and log lines without timestamps under journald.

The tests share one installation and run in file order: the uninstall test comes last.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from inference.config import load_config
from tests.conftest import (
    PROJECT_DIR,
    SMOLLM2,
    DaphneServer,
    free_port,
    server_env,
    start_server,
    wait_for,
    write_config,
)
from tests.database_servers import DatabaseTemplate

TIMESTAMPED_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
UNSTAMPED_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
# What install.sh may leave behind in a rerun; a stamp or file whose mtime moves was rebuilt.
INSTALLED_FILES = (
    ".venv/.requirements",
    ".venv/.model",
    f"models/{SMOLLM2}.gguf",
    "db.sqlite3",
    "staticfiles/admin/css/base.css",
)
# What uninstall.sh must keep.
DATA_FILES = (f"models/{SMOLLM2}.gguf", "db.sqlite3", "config.json", ".secret_key", ".admin_token")
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def real_pip_cache() -> str:
    """The pip cache of the real HOME, where llama-cpp-python's compiled wheel lies."""
    result = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def user_environment(home: Path) -> dict[str, str]:
    """A user's shell in `home`, without this test run's project settings (a DATABASE_URL would
    send the migrations elsewhere) and with the real pip cache (or llama.cpp compiles again)."""
    project_settings = (
        "LLAMA_SERVER_",
        "DJANGO_",
        "XDG_",
        "DATABASE_URL",
        "REDIS_URL",
        "JOURNAL_STREAM",
        "VIRTUAL_ENV",
    )
    environment = {name: value for name, value in os.environ.items() if not name.startswith(project_settings)}
    return {**environment, "HOME": str(home), "PIP_CACHE_DIR": real_pip_cache()}


def copy_checkout(destination: Path) -> None:
    """The files of a checkout: tracked ones and new ones git does not ignore (so no .venv,
    models/ or database)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_DIR,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = PROJECT_DIR / name
        if source.is_file():  # a tracked file deleted in the working tree is still listed
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


@dataclass
class Installation:
    project: Path
    home: Path
    first_output: str = ""

    @property
    def unit_file(self) -> Path:
        return self.home / ".config" / "systemd" / "user" / "llamasite.service"

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess:
        """deploy/<script> --no-systemd, started from another directory, as users may."""
        result = subprocess.run(
            [self.project / "deploy" / script, "--no-systemd", *args],
            cwd=self.home,
            env=user_environment(self.home),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def mtimes(self, names: tuple[str, ...]) -> dict[str, int]:
        """When each of these files in the project (those that exist) was last written."""
        return {name: (self.project / name).stat().st_mtime_ns for name in names if (self.project / name).exists()}


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    root = tmp_path_factory.mktemp("install")
    installation = Installation(project=root / "llamasite", home=root / "home")
    installation.home.mkdir()
    copy_checkout(installation.project)
    installation.first_output = installation.run("install.sh").stdout
    return installation


def unit_problems(unit: Path, home: Path) -> str:
    """What `systemd-analyze --user verify` finds wrong with a unit ("" if nothing).

    It needs no running systemd, only a runtime directory. Bad values and unknown keys are
    warnings with exit code 0, so what it prints counts as much as how it exits.
    """
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    result = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (result.stdout + result.stderr).strip() or (
        "" if result.returncode == 0 else f"exit code {result.returncode}"
    )


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_scripts_show_help_and_refuse_unknown_options_in_one_line(script: str) -> None:
    def run(option: str) -> subprocess.CompletedProcess:
        return subprocess.run([PROJECT_DIR / "deploy" / script, option], capture_output=True, text=True, timeout=10)

    help_text = run("--help")
    assert help_text.returncode == 0
    assert help_text.stdout.startswith(f"Usage: deploy/{script} [--no-systemd]")
    refused = run("--frobnicate")
    assert refused.returncode == 1
    assert refused.stderr == f"{script}: unknown option '--frobnicate' (see --help)\n"


@pytest.mark.external
def test_install_sets_up_the_venv_model_database_and_static_files(installation: Installation) -> None:
    project = installation.project
    assert (project / ".venv" / "bin" / "python").is_file()
    assert (project / "models" / f"{SMOLLM2}.gguf").stat().st_size > 90_000_000
    with sqlite3.connect(project / "db.sqlite3") as database:
        migrated_apps = {app for (app,) in database.execute("SELECT app FROM django_migrations")}
    assert {"inference", "auth", "sessions"} <= migrated_apps
    assert (project / "staticfiles" / "dashboard" / "feed.js").is_file()
    assert (project / "staticfiles" / "admin" / "css" / "base.css").is_file()
    assert (project / "config.json").read_text() == (PROJECT_DIR / "config.json").read_text()
    assert f"cd {project} && .venv/bin/python manage.py serve" in installation.first_output


@pytest.mark.external
def test_the_unit_is_written_with_the_install_path(installation: Installation) -> None:
    project = installation.project
    checked_in = (PROJECT_DIR / "deploy" / "llamasite.service").read_text()
    unit = installation.unit_file.read_text()
    assert unit == checked_in.replace("%h/llamasite", str(project))
    assert f"WorkingDirectory={project}\n" in unit
    assert f"ExecStart={project}/.venv/bin/python manage.py serve\n" in unit
    assert f"Environment=LLAMA_SERVER_CONFIG={project}/config.json\n" in unit


@pytest.mark.external
@needs_systemd_analyze
def test_the_written_unit_verifies(installation: Installation) -> None:
    assert unit_problems(installation.unit_file, installation.home) == ""


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("line", "broken"),
    [
        ("Restart=on-failure", "Restart=sometimes"),
        ("TimeoutStopSec=45", "TimeoutStopSecs=45"),
        ("/.venv/bin/python manage.py serve", "/.venv/bin/pyth0n manage.py serve"),
    ],
)
@pytest.mark.external
def test_verification_catches_a_broken_unit(installation: Installation, tmp_path: Path, line: str, broken: str) -> None:
    unit = installation.unit_file.read_text()
    assert line in unit
    broken_unit = tmp_path / "llamasite.service"
    broken_unit.write_text(unit.replace(line, broken))
    assert unit_problems(broken_unit, installation.home) != ""


@pytest.mark.external
def test_a_second_install_changes_nothing(installation: Installation) -> None:
    def written() -> dict[str, int]:
        return installation.mtimes((*INSTALLED_FILES, "config.json")) | {
            "unit": installation.unit_file.stat().st_mtime_ns
        }

    before = written()
    started = time.monotonic()
    output = installation.run("install.sh").stdout
    seconds = time.monotonic() - started
    assert written() == before
    assert before.keys() == {*INSTALLED_FILES, "config.json", "unit"}
    assert "Installing collected packages" not in output
    assert "No migrations to apply." in output
    assert "0 static files copied" in output
    assert f"unit up to date: {installation.unit_file}" in output
    assert seconds < 30


@pytest.mark.external
def test_a_missing_config_is_written_with_the_defaults(installation: Installation) -> None:
    config = installation.project / "config.json"
    shipped = config.read_text()
    config.unlink()
    try:
        output = installation.run("install.sh").stdout
        assert f"wrote {config}" in output
        written = load_config(config)  # raises if it is invalid
        assert written.model_manager.models_directory == installation.project.resolve() / "models"
        assert (written.server.host, written.server.port) == ("127.0.0.1", 8080)
    finally:
        config.write_text(shipped)


@pytest.fixture
def installed_server(installation: Installation, tmp_path: Path) -> Iterator[DaphneServer]:
    """The installed `manage.py serve`, as the unit runs it: from the install's .venv and
    folder, its stderr the journal's stream (JOURNAL_STREAM names the log file)."""
    project = installation.project
    log_path = tmp_path / "server.log"
    log_path.touch()
    log_stream = log_path.stat()
    database_url = f"sqlite:///{project / 'db.sqlite3'}"
    config = project / "config.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [project / ".venv" / "bin" / "python", "manage.py", "serve", "--port", str(port)],
        cwd=project,
        env={**server_env(config, database_url), "JOURNAL_STREAM": f"{log_stream.st_dev}:{log_stream.st_ino}"},
        stdout=log_path.open("a"),
        stderr=subprocess.STDOUT,
    )
    server = DaphneServer(url=url, log_path=log_path, process=process, database_url=database_url, config=config)

    def answers() -> bool:
        assert process.poll() is None, f"the installed server exited:\n{server.log()}"
        try:
            return httpx.get(f"{url}/health", timeout=1).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, seconds=60)
        yield server
    finally:
        server.stop()


@pytest.mark.external
@pytest.mark.server
def test_the_installed_server_answers_and_logs_without_timestamps_to_the_journal(
    installed_server: DaphneServer,
) -> None:
    assert httpx.get(f"{installed_server.url}/health", timeout=10).json()["status"] == "ok"
    models = httpx.get(f"{installed_server.url}/v1/models", timeout=10).json()["data"]
    assert [model["id"] for model in models] == [SMOLLM2]
    installed_server.stop()
    lines = installed_server.log().splitlines()
    assert any("serving on http://127.0.0.1:" in line for line in lines)
    assert [line for line in lines if not UNSTAMPED_LINE.match(line)] == []


@pytest.mark.server
@pytest.mark.parametrize("journal_stream", [None, "0:0"], ids=["unset", "another-stream"])
def test_log_lines_carry_timestamps_outside_the_journal(
    tmp_path: Path,
    models_dir: Path,
    migrated_database: DatabaseTemplate,
    monkeypatch: pytest.MonkeyPatch,
    journal_stream: str | None,
) -> None:
    """Without JOURNAL_STREAM, or with one inherited from a service whose stream is not this
    process's stderr, every line starts with its time."""
    if journal_stream is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    server = start_server(
        write_config(tmp_path), tmp_path / "server.log", migrated_database, "--port", str(free_port())
    )
    server.stop()
    lines = server.log().splitlines()
    assert any("serving on http://127.0.0.1:" in line for line in lines)
    assert [line for line in lines if not TIMESTAMPED_LINE.match(line)] == []


@pytest.mark.external
def test_uninstall_removes_the_install_and_keeps_the_data(installation: Installation) -> None:
    project = installation.project
    kept = installation.mtimes(DATA_FILES)
    assert {f"models/{SMOLLM2}.gguf", "db.sqlite3", "config.json", ".secret_key"} <= kept.keys()
    output = installation.run("uninstall.sh").stdout
    assert f"removed {project}/.venv" in output
    assert not (project / ".venv").exists()
    assert not (project / "staticfiles").exists()
    assert not installation.unit_file.exists()
    assert installation.mtimes(DATA_FILES) == kept
    assert "removed" not in installation.run("uninstall.sh").stdout
