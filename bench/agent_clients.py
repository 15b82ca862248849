"""The real agent clients (Codex CLI, Claude Code) pointed at a server, offline: what the tests
run and what the agents bench times.

`make agent-clients` installs them into .agent-clients/ at the versions the Makefile pins. Each
run gets a home of its own: nothing of the user's (keys, proxies, ~/.codex) reaches the client,
and no telemetry, update, plugin or retry traffic leaves it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
CLIENTS = PROJECT_DIR / ".agent-clients" / "node_modules" / ".bin"
VERSION_VARIABLES = {"codex": "CODEX_VERSION", "claude": "CLAUDE_CODE_VERSION"}


def pinned_version(client: str) -> str:
    """A client's version as the Makefile pins it (`VARIABLE := 1.2.3`)."""
    variable = VERSION_VARIABLES[client]
    match = re.search(rf"^{variable} := (\S+)$", (PROJECT_DIR / "Makefile").read_text(), re.MULTILINE)
    if match is None:
        raise LookupError(f"the Makefile pins no {variable}")
    return match.group(1)


def installed(client: str) -> Path | None:
    path = CLIENTS / client
    return path if path.exists() else None


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    answer: str  # what the client printed as the model's answer


def _environment(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb", **extra}


def _run(command: list[str | Path], home: Path, timeout: float, **environment: str) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        command,
        cwd=home,
        env=_environment(home, **environment),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def version(client: str, home: Path) -> str:
    ran = _run([CLIENTS / client, "--version"], home, timeout=60)
    return ran.stdout + ran.stderr


def codex_config(base_url: str, model: str) -> str:
    """$CODEX_HOME/config.toml: the server as a Responses API provider (as docs/agents.md gives
    it), offline (no update, plugin or analytics traffic) and failing fast (no retries)."""
    return f"""\
model = "{model}"
model_provider = "llamasite"
check_for_update_on_startup = false

[model_providers.llamasite]
name = "llamasite"
base_url = "{base_url}/v1"
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


def codex_exec(base_url: str, model: str, prompt: str, home: Path, timeout: float) -> Run:
    """`codex exec PROMPT` against the server; its answer is its last message."""
    codex_home = home / "codex-home"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(base_url, model))
    last_message = home / "last-message.txt"
    started = time.monotonic()
    ran = _run(
        [
            CLIENTS / "codex",
            "exec",
            "--skip-git-repo-check",
            "--ephemeral",
            "--color",
            "never",
            "--output-last-message",
            last_message,
            prompt,
        ],
        home,
        timeout,
        CODEX_HOME=str(codex_home),
    )
    answer = last_message.read_text().strip() if last_message.exists() else ""
    return Run(ran.returncode, ran.stdout, ran.stderr, time.monotonic() - started, answer)


def claude_print(base_url: str, model: str, prompt: str, home: Path, timeout: float, max_output_tokens: int) -> Run:
    """`claude -p PROMPT` against the server, every model name it may ask for sent to `model`."""
    started = time.monotonic()
    ran = _run(
        [CLIENTS / "claude", "-p", prompt, "--model", model],
        home,
        timeout,
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY="not-needed",
        ANTHROPIC_DEFAULT_HAIKU_MODEL=model,
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(max_output_tokens),
        CLAUDE_CODE_MAX_CONTEXT_TOKENS="8192",
        CLAUDE_CODE_MAX_RETRIES="0",
    )
    return Run(ran.returncode, ran.stdout, ran.stderr, time.monotonic() - started, ran.stdout.strip())
