"""Model lifecycle on a real server: lazy loads, unloads, the idle reaper, keep_alive, LRU,
reload, the admin API and commands, load records, memory coming back, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    HI,
    PROJECT_DIR,
    DaphneServer,
    ServerFactory,
    free_port,
    link_model,
    start_server,
    validate_openai,
    wait_for,
    write_config,
)
from tests.database_servers import DatabaseTemplate
from tests.gguf_files import write_random

LIFECYCLE_MODELS = ("m-a", "m-b", "m-c", "m-idle", "m-pinned")


def lifecycle_settings(**extra: Any) -> dict[str, Any]:
    models = {
        "m-idle": {"idle_timeout": 2},
        "m-pinned": {"pinned": True},
        **extra.pop("models", {}),
    }
    return {"n_ctx": 2048, "idle_timeout": -1, "check_interval": 0.2, "max_loaded_models": 3, "models": models, **extra}


def lifecycle_config(root: Path, port: int, **extra: Any) -> Path:
    return write_config(root, server={"port": port}, **lifecycle_settings(**extra))


def start_lifecycle_server(root: Path, smollm2_file: Path, template: Path, **extra: Any) -> DaphneServer:
    for name in LIFECYCLE_MODELS:
        link_model(smollm2_file, root / "models", name)
    config = lifecycle_config(root, free_port(), **extra)
    return start_server(config, root / "server.log", template)


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with server_factory("lifecycle", names=LIFECYCLE_MODELS, **lifecycle_settings()) as server:
        yield server


@pytest.fixture(autouse=True)
def nothing_loaded(request: pytest.FixtureRequest) -> None:
    """Each test using the shared server starts with no model loaded."""
    if "server" in request.fixturenames:
        admin(request.getfixturevalue("server"), "/admin/unload", model="all")


def token(server: DaphneServer) -> str:
    return (server.config.parent / ".admin_token").read_text().strip()


def admin(server: DaphneServer, path: str, **body: Any) -> dict:
    response = httpx.post(
        f"{server.url}{path}", json=body, headers={"Authorization": f"Bearer {token(server)}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def events(server: DaphneServer, model: str) -> list[tuple[str, str]]:
    """(kind, reason) of the model's load events, oldest first."""
    rows = server.rows("SELECT kind, reason FROM inference_loadevent WHERE model = ? ORDER BY id", model)
    return [tuple(row) for row in rows]


def test_first_request_loads_lazily_and_is_recorded(server: DaphneServer) -> None:
    assert "m-a" not in server.loaded()
    before = len(events(server, "m-a"))
    assert server.chat("m-a").status_code == 200
    assert "m-a" in server.loaded()
    assert events(server, "m-a")[before:] == [("load", "first_request")]
    [(settings, duration)] = server.rows(
        "SELECT settings, duration_ms FROM inference_loadevent WHERE model = 'm-a' ORDER BY id DESC LIMIT 1"
    )
    assert json.loads(settings)["n_ctx"] == 2048 and duration > 0
    status = httpx.get(f"{server.url}/health").json()["models"]["m-a"]
    assert status["state"] == "loaded" and status["expires_at"] is None  # idle_timeout -1


def test_admin_unload_then_the_next_request_loads_again(server: DaphneServer) -> None:
    server.chat("m-a")
    assert admin(server, "/admin/unload", model="m-a") == {"unloaded": ["m-a"], "pending": []}
    assert "m-a" not in server.loaded()
    assert events(server, "m-a")[-1] == ("unload", "admin_api")
    assert server.chat("m-a.gguf").status_code == 200
    assert events(server, "m-a")[-1] == ("load", "first_request")
    assert admin(server, "/admin/unload", model="m-b") == {"unloaded": [], "pending": []}


def test_admin_load(server: DaphneServer) -> None:
    assert admin(server, "/admin/load", model="m-b") == {"loaded": ["m-b"]}
    assert "m-b" in server.loaded()
    assert events(server, "m-b")[-1] == ("load", "admin_api")


def test_admin_endpoints_need_the_token(server: DaphneServer) -> None:
    token_file = server.config.parent / ".admin_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # generated at first start, owner-only
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token(server)}):
        for path in ("/admin/unload", "/admin/reload", "/admin/reap", "/admin/load"):
            response = httpx.post(f"{server.url}{path}", json={"model": "all"}, headers=headers)
            assert response.status_code == 401
            validate_openai("ErrorResponse", response.json())
            assert response.json()["error"]["type"] == "authentication_error"
    unknown = httpx.post(
        f"{server.url}/admin/unload", json={"model": "nope"}, headers={"Authorization": f"Bearer {token(server)}"}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_unloading_a_busy_model_lets_its_request_finish(server: DaphneServer) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={
            "model": "m-a",
            "messages": HI,
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert admin(server, "/admin/unload", model="m-a") == {"unloaded": [], "pending": ["m-a"]}
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["usage"]["completion_tokens"] == 200
    wait_for(lambda: events(server, "m-a")[-1] == ("unload", "admin_api"))
    assert "m-a" not in httpx.get(f"{server.url}/health").json()["models"]


def test_idle_models_are_reaped(server: DaphneServer) -> None:
    assert server.chat("m-idle").status_code == 200
    expires = httpx.get(f"{server.url}/health").json()["models"]["m-idle"]["expires_at"]
    assert expires is not None
    wait_for(lambda: events(server, "m-idle")[-1] == ("unload", "idle"))
    assert events(server, "m-idle")[-2] == ("load", "first_request")
    assert "m-idle" not in server.loaded()


def test_pinned_models_are_never_reaped_or_evicted(server: DaphneServer) -> None:
    admin(server, "/admin/load", model="m-pinned")
    for name in ("m-a", "m-b", "m-c", "m-a"):
        assert server.chat(name).status_code == 200
    assert admin(server, "/admin/reap") == {"unloaded": []}
    assert "m-pinned" in server.loaded()
    assert httpx.get(f"{server.url}/health").json()["models"]["m-pinned"]["pinned"] is True


def test_least_recently_used_idle_model_makes_room(server: DaphneServer) -> None:
    for name in ("m-a", "m-b", "m-c"):
        assert server.chat(name).status_code == 200
    assert server.chat("m-a").status_code == 200  # m-b is now the least recently used
    assert server.chat("m-idle").status_code == 200
    assert sorted(server.loaded()) == ["m-a", "m-c", "m-idle"]
    assert events(server, "m-b")[-1] == ("unload", "lru")


def test_keep_alive_zero_unloads_right_after_the_request(server: DaphneServer) -> None:
    assert server.chat("m-b", keep_alive=0).status_code == 200
    wait_for(lambda: events(server, "m-b")[-1] == ("unload", "keep_alive"))
    assert "m-b" not in server.loaded()


def test_keep_alive_duration_overrides_the_idle_timeout(server: DaphneServer) -> None:
    assert server.chat("m-c", keep_alive="2s").status_code == 200
    assert httpx.get(f"{server.url}/health").json()["models"]["m-c"]["expires_at"] is not None
    wait_for(lambda: events(server, "m-c")[-1] == ("unload", "keep_alive"))
    assert "m-c" not in server.loaded()
    assert server.chat("m-idle", keep_alive=-1).status_code == 200
    time.sleep(2.6)  # past m-idle's own idle_timeout of 2 s, with the reaper running every 0.2 s
    assert "m-idle" in server.loaded()
    bad = server.chat("m-a", keep_alive="soon")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"


def test_a_broken_model_file_is_recorded_as_a_failed_load(server: DaphneServer) -> None:
    write_random(server.config.parent / "models" / "m-broken.gguf")
    try:
        assert server.chat("m-broken").status_code == 503
        [(kind, reason, error)] = server.rows(
            "SELECT kind, reason, error FROM inference_loadevent WHERE model = 'm-broken' ORDER BY id DESC LIMIT 1"
        )
        assert (kind, reason) == ("load_failed", "error") and "not a GGUF file" in error
    finally:
        (server.config.parent / "models" / "m-broken.gguf").unlink()


def test_commands_control_the_running_server(server: DaphneServer) -> None:
    server.chat("m-a")
    unload = server.manage("unload", "m-a")
    assert unload.returncode == 0, unload.stderr
    assert unload.stdout.strip() == "unloaded: m-a"
    assert events(server, "m-a")[-1] == ("unload", "cli")
    reload = server.manage("reload")
    assert reload.returncode == 0, reload.stderr
    assert reload.stdout.splitlines() == ["added: none", "removed: none", "changed: none"]
    reap = server.manage("reaper", "--once")
    assert reap.returncode == 0 and reap.stdout.strip() == "unloaded: nothing"
    unknown = server.manage("unload", "nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr


@pytest.mark.slow
def test_commands_say_so_when_no_server_runs(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"server": {"port": free_port()}}))
    (tmp_path / ".admin_token").write_text("t")
    for args in (["unload", "all"], ["reload"], ["reaper", "--once"]):
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT_DIR,
            env={**os.environ, "LLAMA_SERVER_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1
        assert "no llamasite server is running" in result.stderr


def test_discovered_models_are_recorded_at_start(server: DaphneServer) -> None:
    rows = server.rows(
        "SELECT name, architecture, quantization, parameter_count, context_length, present, instance "
        "FROM inference_discoveredmodel ORDER BY name"
    )
    by_name = {row[0]: row[1:] for row in rows}
    assert set(by_name) >= {"m-a", "m-b", "m-c", "m-idle", "m-pinned"}
    port = server.url.rsplit(":", 1)[1]
    assert by_name["m-a"] == ("llama", "Q4_1", 134515008, 8192, 1, f"127.0.0.1:{port}")


def process_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def test_memory_comes_back_after_unloads(server: DaphneServer) -> None:
    def cycle() -> float:
        assert server.chat("m-a").status_code == 200
        peak = process_rss_mb(server.process.pid)
        admin(server, "/admin/unload", model="m-a")
        return peak

    cycle()  # the first load also initialises llama.cpp's backends, once per process
    baseline = process_rss_mb(server.process.pid)
    peaks = [cycle() for _ in range(5)]
    after = process_rss_mb(server.process.pid)
    assert min(peaks) > baseline + 100  # a loaded model really takes memory…
    assert after - baseline < 15, (baseline, peaks, after)  # …and gives it back


def open_database_files(pid: int) -> int:
    """How many of the process's open files are its SQLite database (and its WAL)."""
    fds = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return sum("db.sqlite3" in target for target in targets)


def test_load_and_unload_cycles_leave_no_database_connection_open(server: DaphneServer) -> None:
    """Each load reads the model's saved settings on its worker's thread: that thread's
    connection is closed with it, not left for the collector."""
    admin(server, "/admin/load", model="m-b")
    admin(server, "/admin/unload", model="m-b")
    before = open_database_files(server.process.pid)
    for _ in range(10):
        admin(server, "/admin/load", model="m-b")
        admin(server, "/admin/unload", model="m-b")
    assert open_database_files(server.process.pid) <= before, (before, open_database_files(server.process.pid))


@pytest.mark.server
def test_reload_applies_settings_and_rediscovers(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    # No idle check during the test: it would unload the deleted m-c (as file_removed) before reload does.
    quiet_reaper = {"check_interval": 3600}
    server = start_lifecycle_server(tmp_path, smollm2_file, migrated_database, **quiet_reaper)
    try:
        for name in ("m-a", "m-c"):
            assert server.chat(name).status_code == 200
        (tmp_path / "models" / "m-c.gguf").unlink()
        link_model(smollm2_file, tmp_path / "models", "m-new")
        port = int(server.url.rsplit(":", 1)[1])
        lifecycle_config(tmp_path, port, models={"m-a": {"n_ctx": 512}}, **quiet_reaper)
        assert admin(server, "/admin/reload") == {"added": ["m-new"], "removed": ["m-c"], "changed": ["m-a"]}
        assert "m-c" not in server.loaded() and "m-a" in server.loaded()
        assert events(server, "m-c")[-1] == ("unload", "reload")
        ids = [model["id"] for model in httpx.get(f"{server.url}/v1/models").json()["data"]]
        assert "m-c" not in ids and "m-new" in ids
        assert server.rows("SELECT present FROM inference_discoveredmodel WHERE name = 'm-c'") == [(0,)]
        assert server.rows("SELECT present FROM inference_discoveredmodel WHERE name = 'm-new'") == [(1,)]

        admin(server, "/admin/unload", model="m-a")
        assert server.chat("m-a").status_code == 200  # loads with the new settings
        [(settings,)] = server.rows(
            "SELECT settings FROM inference_loadevent WHERE model = 'm-a' AND kind = 'load' ORDER BY id DESC LIMIT 1"
        )
        assert json.loads(settings)["n_ctx"] == 512

        server.config.write_text('{"model_manager": {"n_ctx": "huge"}}')
        refused = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {token(server)}"})
        assert refused.status_code == 400
        assert "model_manager.n_ctx" in refused.json()["error"]["message"]
        assert server.chat("m-idle").status_code == 200  # the old config is still in force
    finally:
        server.stop()


@pytest.mark.server
def test_sigterm_lets_running_streams_finish_then_unloads(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    server = start_lifecycle_server(tmp_path, smollm2_file, migrated_database)
    try:
        assert server.chat("m-b").status_code == 200
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={"model": "m-a", "messages": HI, "max_tokens": 150, "ignore_eos": True, "stream": True},
            timeout=60,
        ) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            server.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert server.process.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/health", timeout=2)
        assert events(server, "m-a")[-1] == ("unload", "shutdown")
        assert events(server, "m-b")[-1] == ("unload", "shutdown")
        assert "stopped" in server.log()
    finally:
        server.stop()
