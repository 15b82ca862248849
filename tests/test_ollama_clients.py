"""The official `ollama` libraries work against the server unchanged: the Python client from PyPI
(pinned in requirements-dev.txt) and the JavaScript one from npm (pinned in the Makefile,
installed by `make ollama-js` into .ollama-js/; without node and that install its test skips, as
the agent clients' do). The server requires API keys: the clients send theirs as
`Authorization: Bearer`, and the admin token for pull and delete."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import ollama
import pytest

from tests.conftest import PROJECT_DIR, SMOLLM2, DaphneServer, ServerFactory, wait_for
from tests.file_server import FileServer

ADMIN_TOKEN = "ollama-clients-admin"
GREEDY = {"temperature": 0}
JS_DIR = PROJECT_DIR / ".ollama-js"
JS_LIBRARY = JS_DIR / "node_modules" / "ollama"


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with server_factory(
        "ollama-clients", n_ctx=2048, server={"require_api_key": True}, env={"LLAMA_SERVER_ADMIN_TOKEN": ADMIN_TOKEN}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def api_key(server: DaphneServer) -> str:
    created = server.manage("apikey", "create", "ollama-clients")
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


@pytest.fixture
def client(server: DaphneServer, api_key: str) -> ollama.Client:
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120)


def loaded(client: ollama.Client) -> list[str]:
    return [model.model or "" for model in client.ps().models]


def test_list_show_and_ps(client: ollama.Client) -> None:
    assert [model.model for model in client.list().models] == [f"{SMOLLM2}:latest"]
    shown = client.show(SMOLLM2)
    assert shown.details and shown.details.family == "llama" and shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    assert shown.capabilities == ["completion", "tools"] and "num_ctx 2048" in (shown.parameters or "")
    client.generate(SMOLLM2, keep_alive="5m")  # loads it
    [running] = client.ps().models
    assert running.model == f"{SMOLLM2}:latest" and running.context_length == 2048 and running.expires_at


def test_chat_streamed_and_not_say_the_same(client: ollama.Client) -> None:
    request = {
        "model": SMOLLM2,
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "options": {**GREEDY, "num_predict": 10},
    }
    chunks = list(client.chat(**request, stream=True))
    whole = client.chat(**request)
    assert "".join(chunk.message.content or "" for chunk in chunks) == whole.message.content != ""
    last = chunks[-1]
    assert last.done and last.done_reason in ("stop", "length") and last.eval_count == whole.eval_count
    assert (last.total_duration or 0) > 0 and (last.prompt_eval_count or 0) > 0


def test_generate_streamed_and_not_say_the_same(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 8}
    streamed = "".join(
        part.response or "" for part in client.generate(SMOLLM2, "Once upon a time", stream=True, options=options)
    )
    whole = client.generate(SMOLLM2, "Once upon a time", options=options)
    assert streamed == whole.response != "" and whole.done and whole.eval_count == 8


def test_embed(client: ollama.Client) -> None:
    embedded = client.embed(SMOLLM2, ["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 576
    assert client.embeddings(SMOLLM2, "one").embedding == pytest.approx(embedded.embeddings[0], abs=1e-5)


def test_format_with_a_schema(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "population": {"type": "integer", "maximum": 99999999},
        },
        "required": ["city", "population"],
    }
    reply = client.chat(
        SMOLLM2,
        messages=[{"role": "user", "content": "A city and its population, as JSON."}],
        format=schema,
        options={**GREEDY, "num_predict": 30},
    )
    jsonschema.validate(json.loads(reply.message.content or ""), schema)


def test_keep_alive_zero_unloads(client: ollama.Client) -> None:
    client.chat(SMOLLM2, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 1}, keep_alive=-1)
    assert f"{SMOLLM2}:latest" in loaded(client)
    assert client.generate(SMOLLM2, keep_alive=0).done_reason == "unload"
    assert loaded(client) == []
    client.chat(SMOLLM2, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 1}, keep_alive=0)
    wait_for(lambda: loaded(client) == [])


def test_errors_are_response_errors_with_their_status(client: ollama.Client, server: DaphneServer) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat("no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.generate("no-such-model:latest", "Hi", stream=True))
    assert streamed.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as template:
        client.generate(SMOLLM2, "Hi", template="{{ .Prompt }}")
    assert template.value.status_code == 400 and "template" in template.value.error
    with pytest.raises(ollama.ResponseError) as keyless:
        ollama.Client(host=server.url).list()
    assert keyless.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as not_admin:
        ollama.Client(host=server.url, headers={"Authorization": "Bearer sk-nope"}).delete(SMOLLM2)
    assert not_admin.value.status_code == 401


def test_pull_and_delete_with_the_admin_token(server: DaphneServer, files: FileServer, client: ollama.Client) -> None:
    admin = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120)
    statuses = [progress.status for progress in admin.pull(f"{files.url}/ok/from-the-client.gguf", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "from-the-client:latest" in [model.model for model in client.list().models]
    assert admin.delete("from-the-client:latest").status == "success"
    assert "from-the-client:latest" not in [model.model for model in client.list().models]
    assert admin.pull(f"{files.url}/ok/again.gguf").status == "success"  # not streamed: its last status
    admin.delete("again")


# --- the JavaScript library --------------------------------------------------------------------

JS_SCRIPT = """
import { Ollama } from %(library)s;
const ollama = new Ollama({ host: %(host)s, headers: { Authorization: %(authorization)s } });
const model = %(model)s;
const options = { temperature: 0, num_predict: 8 };
const messages = [{ role: "user", content: "Name a colour." }];
const out = {};
out.list = (await ollama.list()).models.map((m) => m.model);
out.show = (await ollama.show({ model })).details.family;
const whole = await ollama.chat({ model, messages, options });
out.chat = whole.message.content;
let streamed = "";
for await (const part of await ollama.chat({ model, messages, options, stream: true })) {
  streamed += part.message.content;
  if (part.done) out.done = [part.done_reason, part.eval_count];
}
out.streamed = streamed;
out.generate = (await ollama.generate({ model, prompt: "Hi", options })).response;
out.embed = (await ollama.embed({ model, input: "Hi" })).embeddings[0].length;
out.ps = (await ollama.ps()).models.map((m) => m.model);
try {
  await ollama.chat({ model: "no-such-model", messages });
} catch (error) {
  out.error = [error.name, error.status_code];
}
console.log(JSON.stringify(out));
"""


def js_library_or_skip() -> None:
    """Skips the test when node or the library is missing; fails it if it is not the pinned version."""
    package = JS_LIBRARY / "package.json"
    if shutil.which("node") is None or not package.exists():
        pytest.skip("the ollama JavaScript library is not installed in .ollama-js/: run `make ollama-js` (needs npm)")
    pinned = re.search(r"^OLLAMA_JS_VERSION := (\S+)$", (PROJECT_DIR / "Makefile").read_text(), re.MULTILINE)
    assert pinned is not None and json.loads(package.read_text())["version"] == pinned.group(1)


@pytest.mark.external
def test_the_javascript_library(server: DaphneServer, api_key: str, tmp_path: Path) -> None:
    js_library_or_skip()
    script = tmp_path / "client.mjs"
    values = {
        "library": (JS_LIBRARY / "dist" / "index.mjs").as_uri(),
        "host": server.url,
        "authorization": f"Bearer {api_key}",
        "model": SMOLLM2,
    }
    script.write_text(JS_SCRIPT % {name: json.dumps(value) for name, value in values.items()})
    ran = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out["list"] == [f"{SMOLLM2}:latest"] and out["show"] == "llama"
    assert out["streamed"] == out["chat"] != "" and out["done"][0] in ("stop", "length") and out["done"][1] <= 8
    assert out["generate"] and out["embed"] == 576 and out["ps"] == [f"{SMOLLM2}:latest"]
    assert out["error"] == ["ResponseError", 404]
