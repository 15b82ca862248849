"""The servers under test, each started on a free port and stopped afterwards."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Running:
    url: str
    model: str
    health_path: str
    process: subprocess.Popen
    workdir: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, path: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")


@contextmanager
def started(
    command: list[str], env: dict[str, str], url: str, model: str, health: str, workdir: Path
) -> Iterator[Running]:
    log = workdir / "server.log"
    process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until_up(url, health, process, log)
        yield Running(url, model, health, process, workdir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def llamasite_env(workdir: Path) -> dict[str, str]:
    """The environment of a `llamasite` server's manage.py commands: its config, database and
    admin token ("bench")."""
    return {
        **os.environ,
        "LLAMA_SERVER_CONFIG": str(workdir / "config.json"),
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "LLAMA_SERVER_ADMIN_TOKEN": "bench",
    }


@contextmanager
def llamasite(
    model_path: Path,
    settings: dict,
    records: bool = True,
    server: dict | None = None,
    with_model: bool = True,
    more_models: tuple[Path, ...] = (),
) -> Iterator[Running]:
    """This server (manage.py serve) with a scratch config and database; `server` adds server
    settings; without `with_model` its models directory is empty (a relay to its peers);
    `more_models` are linked in beside it."""
    workdir = Path(tempfile.mkdtemp(prefix="llamasite-bench-"))
    (workdir / "models").mkdir()
    for path in ((model_path,) if with_model else ()) + more_models:
        os.link(path, workdir / "models" / path.name)
    port = free_port()
    config = {
        "server": {"port": port, "log_level": "WARNING", **(server or {})},
        "model_manager": {"models_directory": "models", "idle_timeout": -1, **settings},
        "records": {"request_records": records},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    env = llamasite_env(workdir)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=PROJECT_DIR, env=env, check=True)
    try:
        with started(
            [sys.executable, "manage.py", "serve"], env, f"http://127.0.0.1:{port}", model_path.stem, "/health", workdir
        ) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def llama_cpp_python_server(python: str, model_path: Path, n_ctx: int, threads: tuple[int, int]) -> Iterator[Running]:
    """llama-cpp-python's own server, from its bench-only environment."""
    workdir = Path(tempfile.mkdtemp(prefix="llamacpp-python-bench-"))
    port = free_port()
    command = [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads[0]),
        "--n_threads_batch",
        str(threads[1]),
        "--flash_attn",
        "true",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    try:
        with started(
            command, dict(os.environ), f"http://127.0.0.1:{port}", model_path.stem, "/v1/models", workdir
        ) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def llama_cpp_server(
    binary: str, model_path: Path, n_ctx: int, threads: tuple[int, int], slots: int, extra: list[str] | None = None
) -> Iterator[Running]:
    """llama.cpp's C++ llama-server with `slots` slots sharing one KV cache, as ours do; `extra`
    adds its options."""
    workdir = Path(tempfile.mkdtemp(prefix="llama-server-bench-"))
    port = free_port()
    command = [
        binary,
        "-m",
        str(model_path),
        "-c",
        str(n_ctx),
        "-t",
        str(threads[0]),
        "-tb",
        str(threads[1]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(slots),
        "--kv-unified",
        "--no-webui",
        *(extra or []),
    ]
    try:
        with started(
            command, dict(os.environ), f"http://127.0.0.1:{port}", model_path.stem, "/health", workdir
        ) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
