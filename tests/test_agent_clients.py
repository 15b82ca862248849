"""The real agent clients, the Codex CLI and Claude Code, work against the server unchanged.

`make agent-clients` installs them from the npm registry, at the versions the Makefile pins,
into .agent-clients/; without them these tests skip. Each runs offline in a home of its own, as
bench/agent_clients.py sets it up (no telemetry, update or plugin checks; no retries, so a
failure shows at once).

Each runs with its own instructions and tools. Described in full, they outgrow SmolLM2's
8,192-token context (Codex ~8.6k tokens, Claude Code ~12.8k); the server then offers the tools in
short (inference.serving.tools), and the prompt fits. Each runs twice: against SmolLM2's own
template (which renders no tools: the generic way), and against Qwen3's (tools, calls and
results in Qwen3's own markup), as a Qwen3 model would be served.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import agent_clients
from tests.conftest import SMOLLM2, DaphneServer, ServerFactory

pytestmark = pytest.mark.external

PROMPT = "Say hello in one short sentence."
# Each prompt is ~5k tokens, and prompt processing on two cores runs at ~100 tokens/s.
CLIENT_TIMEOUT = 300
MAX_OUTPUT_TOKENS = 64


def client_or_skip(client: str, home: Path) -> None:
    """Skips the test when the client is not installed; fails it if it is not the pinned version."""
    if agent_clients.installed(client) is None:
        pytest.skip(f"{client} is not installed in .agent-clients/: run `make agent-clients` (needs npm)")
    printed = agent_clients.version(client, home)
    assert agent_clients.pinned_version(client) in printed, f"{client} is not the pinned version: {printed}"


def endpoint_rows(server: DaphneServer, endpoint: str) -> list[tuple]:
    return server.rows(
        "SELECT model, stream, status, http_status, error_message, prompt_tokens, completion_tokens"
        " FROM inference_requestrecord WHERE endpoint = ?",
        endpoint,
    )


QWEN3_TEMPLATE = Path(__file__).parent / "data" / "templates" / "Qwen-Qwen3-0.6B.jinja"


@pytest.fixture(scope="module", params=["own-template", "qwen3-template"])
def agent_server(request: pytest.FixtureRequest, server_factory: ServerFactory) -> Iterator[DaphneServer]:
    """A server whose SmolLM2 has its whole trained context: the clients' prompts outgrow the
    session server's 4096. The clients send no temperature; sampled at llama.cpp's 0.8, SmolLM2
    sometimes rambles to the length limit and Codex exits 1 on `incomplete`: greedy here."""
    models = {SMOLLM2: {"chat_template": str(QWEN3_TEMPLATE)}} if request.param == "qwen3-template" else {}
    with server_factory(f"agents-{request.param}", n_ctx=8192, n_threads=2, temperature=0, models=models) as server:
        yield server


def ran_in_time(run: Callable[..., agent_clients.Run], *args: object) -> agent_clients.Run:
    try:
        return run(*args)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the client did not finish in {CLIENT_TIMEOUT} s:\n{expired.stdout}\n{expired.stderr}")


def test_codex_exec(agent_server: DaphneServer, tmp_path: Path) -> None:
    client_or_skip("codex", tmp_path)
    ran = ran_in_time(agent_clients.codex_exec, agent_server.url, SMOLLM2, PROMPT, tmp_path, CLIENT_TIMEOUT)

    assert ran.returncode == 0, f"codex exited {ran.returncode}:\n{ran.stdout}\n{ran.stderr}"
    assert ran.answer and ran.answer in ran.stdout, f"codex printed no answer:\n{ran.stdout}\n{ran.stderr}"
    records = endpoint_rows(agent_server, "/v1/responses")
    assert records, "no request reached /v1/responses"
    assert all(row[:4] == (SMOLLM2, True, "ok", 200) for row in records), records
    assert records[0][5] > 3000, "the prompt lacks Codex's own instructions and tools"


def test_claude_code_print(agent_server: DaphneServer, tmp_path: Path) -> None:
    client_or_skip("claude", tmp_path)
    ran = ran_in_time(
        agent_clients.claude_print, agent_server.url, SMOLLM2, PROMPT, tmp_path, CLIENT_TIMEOUT, MAX_OUTPUT_TOKENS
    )

    # A reply cut at the cap is resumed up to three times, then reported (exit 1) in place of the text.
    capped = f"exceeded the {MAX_OUTPUT_TOKENS} output token maximum" in ran.stdout
    assert ran.returncode == 0 or capped, f"claude exited {ran.returncode}:\n{ran.stdout}\n{ran.stderr}"
    assert ran.answer, f"claude printed no answer:\n{ran.stderr}"
    records = endpoint_rows(agent_server, "/v1/messages")
    assert records, "no request reached /v1/messages"
    assert all(row[:4] == (SMOLLM2, True, "ok", 200) for row in records), records
    assert all(row[6] <= MAX_OUTPUT_TOKENS for row in records), records
    assert records[0][5] > 3000, "the prompt lacks Claude Code's own instructions and tools"
