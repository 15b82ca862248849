"""`manage.py serve`: starts daphne from config.json; refuses bad configs and busy ports in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import CONFIG_ENV_VAR, PROJECT_DIR, SMOLLM2, free_port, link_model, start_server
from tests.database_servers import DatabaseTemplate

pytestmark = pytest.mark.server


def run_serve(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "serve", *args],
        cwd=PROJECT_DIR,
        env={**os.environ, CONFIG_ENV_VAR: str(config)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_invalid_json_config_is_one_line_with_position(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"server": {"port": 8080,}}')
    assert_one_line_failure(run_serve(config), str(config), "line 1, column 26")


def test_wrong_type_in_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_manager": {"n_ctx": "big"}}))
    assert_one_line_failure(run_serve(config), str(config), "model_manager.n_ctx", "integer")


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_failure(run_serve(config, "--port", str(port)), f"127.0.0.1:{port}", "already in use")


def test_serves_on_the_configured_port_without_a_models_directory_then_finds_models(
    tmp_path: Path, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> None:
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "server": {"port": port, "cors_origins": ["http://good.example"]},
                "model_manager": {"models_directory": "not-yet", "default_model": SMOLLM2},
            }
        )
    )
    log_path = tmp_path / "server.log"
    server = start_server(config, log_path, migrated_database)
    url = server.url
    try:
        models = httpx.get(f"{url}/v1/models", timeout=1)
        assert models.json() == {"object": "list", "data": []}
        assert "not-yet does not exist" in log_path.read_text()
        missing = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert missing.status_code == 404

        link_model(smollm2_file, tmp_path / "not-yet", SMOLLM2)
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == [SMOLLM2]
        chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            headers={"Origin": "http://good.example"},
            timeout=60,
        )
        assert chat.status_code == 200
        assert chat.headers["access-control-allow-origin"] == "http://good.example"
        evil = httpx.get(f"{url}/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in evil.headers
        log = log_path.read_text()
        assert f"loaded {SMOLLM2} in" in log and "n_ctx=8192" in log
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
