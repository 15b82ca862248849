"""The real agent clients, the Codex CLI and Claude Code, work against the server unchanged.

`make agent-clients` installs them from the npm registry, at the versions the Makefile pins,
into .agent-clients/; without them these tests skip. Each client runs offline in a home of its
own: no telemetry, no update or plugin checks, no retries (a failure shows at once).

Each runs with its own instructions and tools. Described in full, they outgrow SmolLM2's
8,192-token context (Codex ~8.6k tokens, Claude Code ~12.8k); the server then offers the tools in
short (inference.tools), and the prompt fits.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SMOLLM2, DaphneServer, link_model, start_server, write_config
from tests.services import PROJECT_DIR, DatabaseTemplate, free_port

CLIENTS = PROJECT_DIR / ".agent-clients" / "node_modules" / ".bin"
PROMPT = "Say hello in one short sentence."
# Each prompt is ~5k tokens, and prompt processing on two cores runs at ~100 tokens/s.
CLIENT_TIMEOUT = 300
MAX_OUTPUT_TOKENS = 64


def pinned_version(variable: str) -> str:
    """A client's version as the Makefile pins it (`VARIABLE := 1.2.3`)."""
    match = re.search(rf"^{variable} := (\S+)$", (PROJECT_DIR / "Makefile").read_text(), re.MULTILINE)
    assert match, f"the Makefile pins no {variable}"
    return match.group(1)


def installed_client(name: str, variable: str, home: Path) -> Path:
    """The client's executable, at the pinned version; skips the test when it is not installed."""
    path = CLIENTS / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in .agent-clients/: run `make agent-clients` (needs npm)")
    version = run_client([path, "--version"], home)
    assert pinned_version(variable) in version.stdout, f"{name} is not the pinned version: {version.stdout}{version.stderr}"
    return path


def client_env(home: Path, **environment: str) -> dict[str, str]:
    """A clean environment: nothing of the user's (keys, proxies, the real ~/.codex) reaches the client."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb", **environment}


def run_client(command: list[str | Path], home: Path, **environment: str) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            command, cwd=home, env=client_env(home, **environment), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{command[0]} did not finish in {CLIENT_TIMEOUT} s:\n{expired.stdout}\n{expired.stderr}")


def endpoint_rows(server: DaphneServer, endpoint: str) -> list[tuple]:
    return server.rows(
        "SELECT model, stream, status, http_status, error_message, prompt_tokens, completion_tokens"
        " FROM inference_requestrecord WHERE endpoint = ?",
        endpoint,
    )


@pytest.fixture(scope="module")
def agent_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path, migrated_database: DatabaseTemplate
) -> Iterator[DaphneServer]:
    """A server whose SmolLM2 has its whole trained context: the clients' prompts outgrow the
    session server's 4096."""
    root = tmp_path_factory.mktemp("agents")
    link_model(smollm2_file, root / "models", SMOLLM2)
    config = write_config(root, n_ctx=8192, n_threads=2)
    server = start_server(config, root / "server.log", migrated_database, "--port", str(free_port()))
    yield server
    server.stop()


def codex_config(server: DaphneServer) -> str:
    """~/.codex/config.toml for llamasite, as the README gives it, plus what keeps a test offline
    (no update, plugin or analytics traffic) and fast to fail (no retries)."""
    return f"""\
model = "{SMOLLM2}"
model_provider = "llamasite"
check_for_update_on_startup = false

[model_providers.llamasite]
name = "llamasite"
base_url = "{server.url}/v1"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[features]
plugins = false
remote_plugin = false
apps = false

[analytics]
enabled = false

[feedback]
enabled = false
"""


def test_codex_exec(agent_server: DaphneServer, tmp_path: Path) -> None:
    codex = installed_client("codex", "CODEX_VERSION", tmp_path / "home")
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(codex_config(agent_server))
    last_message = tmp_path / "last-message.txt"

    ran = run_client(
        [codex, "exec", "--skip-git-repo-check", "--ephemeral", "--color", "never",
         "--output-last-message", last_message, PROMPT],
        tmp_path / "home", CODEX_HOME=str(codex_home),
    )

    assert ran.returncode == 0, f"codex exited {ran.returncode}:\n{ran.stdout}\n{ran.stderr}"
    assert last_message.read_text().strip(), f"codex printed no answer:\n{ran.stdout}\n{ran.stderr}"
    assert last_message.read_text().strip() in ran.stdout
    records = endpoint_rows(agent_server, "/v1/responses")
    assert records, "no request reached /v1/responses"
    assert all(row[:4] == (SMOLLM2, True, "ok", 200) for row in records), records
    assert records[0][5] > 500, "the prompt lacks Codex's own instructions and tools"


def test_claude_code_print(agent_server: DaphneServer, tmp_path: Path) -> None:
    claude = installed_client("claude", "CLAUDE_CODE_VERSION", tmp_path / "home")

    ran = run_client(
        [claude, "--bare", "-p", PROMPT, "--model", SMOLLM2],
        tmp_path / "home",
        ANTHROPIC_BASE_URL=agent_server.url,
        ANTHROPIC_API_KEY="not-needed",
        ANTHROPIC_DEFAULT_HAIKU_MODEL=SMOLLM2,
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(MAX_OUTPUT_TOKENS),
        CLAUDE_CODE_MAX_CONTEXT_TOKENS="8192",
        CLAUDE_CODE_MAX_RETRIES="0",
    )

    # A reply cut at the cap is resumed up to three times, then reported (exit 1) in place of the text.
    capped = f"exceeded the {MAX_OUTPUT_TOKENS} output token maximum" in ran.stdout
    assert ran.returncode == 0 or capped, f"claude exited {ran.returncode}:\n{ran.stdout}\n{ran.stderr}"
    assert ran.stdout.strip(), f"claude printed no answer:\n{ran.stderr}"
    records = endpoint_rows(agent_server, "/v1/messages")
    assert records, "no request reached /v1/messages"
    assert all(row[:4] == (SMOLLM2, True, "ok", 200) for row in records), records
    assert all(row[6] <= MAX_OUTPUT_TOKENS for row in records), records
    assert records[0][5] > 500, "the prompt lacks Claude Code's own instructions and tools"
