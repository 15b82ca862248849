"""The soak's traffic (bench.soak): a weighted mix of every API's requests, right and wrong, sent
by a few clients at once, each tallied by whether it should leave a RequestRecord.

A request leaves a record when it is a POST to an inference endpoint and was not refused for its
key (401): DESIGN, "each request is one RequestRecord with its endpoint; unauthenticated 401s
are not stored". Reads (`/v1/models`, stored responses), `/health`, `/metrics` and the admin
endpoints leave none. Every call waits at a gate first, so the sampler can stop the traffic and
measure the server quiet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

logger = logging.getLogger("bench.soak")

SMOL = "SmolLM2-135M-Instruct.Q4_1"  # the chat model
GEMMA = "gemma"  # gemma-3-270m, a base model without chat template
ADMIN_TOKEN = "bench"  # bench.servers.llamasite's LLAMA_SERVER_ADMIN_TOKEN
N_CTX = 2048
MAX_BODY_BYTES = 65536
RECORDED = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
)
# What ends a complete stream, per endpoint; a mid-stream error is an anomaly.
STREAM_ENDS = {
    "/v1/chat/completions": ("data: [DONE]",),
    "/v1/completions": ("data: [DONE]",),
    "/v1/responses": ("event: response.completed", "event: response.incomplete"),
    "/v1/messages": ("event: message_stop",),
}
STREAM_ERRORS = ('data: {"error"', "event: error", "event: response.failed")

TOPICS = ("a lighthouse", "the harbour", "a red bicycle", "fresh bread", "the moon", "a chess game", "rain", "a cat")
RULE = "Answer in one short sentence, plainly, without lists. "
SYSTEM = "You are a helpful assistant for a small town's harbour office. " + RULE * 40  # ~500 tokens, cached
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CITY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}
TOO_LONG = "Hi " * (N_CTX + 500)  # more tokens than the context holds, fewer bytes than max_body_bytes


def ask(rng: random.Random) -> str:
    return f"Tell me about {rng.choice(TOPICS)}. ({rng.randrange(10**6)})"


@dataclass
class Tally:
    """What the clients sent and saw, shared by them all (one event loop)."""

    calls: Counter[str] = field(default_factory=Counter)  # per kind of call
    records: Counter[str] = field(default_factory=Counter)  # per endpoint: requests that should have a record
    errors: Counter[str] = field(default_factory=Counter)  # of those, answered with an error status
    cut: Counter[str] = field(default_factory=Counter)  # of those, streams the client closed early
    unrecorded: Counter[str] = field(default_factory=Counter)  # per path: requests that leave no record
    uncertain: Counter[str] = field(default_factory=Counter)  # per endpoint: no answer (may have a record)
    anomalies: list[str] = field(default_factory=list)  # unexpected answers, with their request

    @property
    def total(self) -> int:
        return sum(self.calls.values())


class Traffic:
    """`clients` clients, each picking scenarios at random until stopped; `gate` pauses them
    between calls and `quiet()` waits until none is in flight."""

    def __init__(self, url: str, keys: dict[str, str], clients: int, seed: int) -> None:
        self.url, self.keys, self.clients, self.seed = url, keys, clients, seed
        self.tally = Tally()
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self._idle = asyncio.Condition()
        self._stopping = False

    async def run(self) -> None:
        await asyncio.gather(*(self._client(number) for number in range(self.clients)))

    def stop(self) -> None:
        self._stopping = True

    async def quiet(self) -> None:
        async with self._idle:
            await self._idle.wait_for(lambda: self.in_flight == 0)

    async def _client(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        weights = [weight for weight, _ in SCENARIOS]
        # No keep-alive: the server's open files are then its own, not idle client connections.
        async with httpx.AsyncClient(
            base_url=self.url, timeout=300, limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:
            session = Session(self, http, rng)
            while not self._stopping:
                _, scenario = rng.choices(SCENARIOS, weights)[0]
                await scenario(session, rng)


class Session:
    """One client's calls: each waits at the gate, is counted in flight, and is tallied."""

    def __init__(self, traffic: Traffic, http: httpx.AsyncClient, rng: random.Random) -> None:
        self.traffic, self.http, self.rng = traffic, http, rng

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int = 200,
        key: str = "main",
        raw: bytes | None = None,
        cut_after: int = 0,
    ) -> Any:
        """Send one request and tally it; its JSON answer (None for a stream or a failure).
        `key`: which API key ("main", "limited", "revoked", "wrong", "admin"); `cut_after`: close
        a stream after that many events."""
        traffic = self.traffic
        await traffic.gate.wait()
        traffic.in_flight += 1
        try:
            return await self._send(kind, method, path, body, expect, key, raw, cut_after)
        finally:
            traffic.in_flight -= 1
            if traffic.in_flight == 0:
                async with traffic._idle:
                    traffic._idle.notify_all()

    async def _send(
        self, kind: str, method: str, path: str, body: Any, expect: int, key: str, raw: bytes | None, cut_after: int
    ) -> Any:
        tally = self.traffic.tally
        tally.calls[kind] += 1
        secret = ADMIN_TOKEN if key == "admin" else self.traffic.keys.get(key, "sk-soak-wrong-key")
        header = {"x-api-key": secret} if path.startswith("/v1/messages") else {"Authorization": f"Bearer {secret}"}
        content = raw if raw is not None else None if body is None else json.dumps(body).encode()
        headers = {**header, **({"Content-Type": "application/json"} if content is not None else {})}
        endpoint = path if method == "POST" and path in RECORDED else None
        streaming = isinstance(body, dict) and body.get("stream") is True
        described = f"{kind}: {method} {path} {(content or b'')[:200]!r}"
        try:
            async with self.http.stream(method, path, content=content, headers=headers) as response:
                if endpoint and response.status_code != 401:
                    tally.records[endpoint] += 1
                    tally.errors[endpoint] += response.status_code >= 400
                else:
                    tally.unrecorded[path.split("/resp_")[0]] += 1
                if response.status_code != expect:
                    text = (await response.aread()).decode(errors="replace")
                    self._anomaly(f"{described} → {response.status_code} (expected {expect}) {text[:400]}")
                    return None
                if not streaming or response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    is_json = response.headers.get("content-type", "").startswith("application/json")
                    return json.loads(text) if is_json else text
                return await self._stream(response, endpoint or path, cut_after, described)
        except httpx.HTTPError as error:
            if endpoint:
                tally.uncertain[endpoint] += 1
            self._anomaly(f"{described} → {type(error).__name__}: {error}")
            return None

    async def _stream(self, response: httpx.Response, endpoint: str, cut_after: int, described: str) -> None:
        events, text = 0, ""
        async for chunk in response.aiter_text():
            text += chunk
            events = text.count("\n\n")
            if cut_after and events >= cut_after:
                self.traffic.tally.cut[endpoint] += 1
                return None  # leaving the block closes the connection mid-stream
        if any(error in text for error in STREAM_ERRORS) or not any(end in text for end in STREAM_ENDS[endpoint]):
            self._anomaly(f"{described} → a stream without its end, or with an error: …{text[-400:]!r}")
        return None

    def _anomaly(self, line: str) -> None:
        self.traffic.tally.anomalies.append(line)
        logger.warning("anomaly: %s", line)


# --- scenarios: each one or a few calls -----------------------------------------------------------


async def chat(s: Session, rng: random.Random) -> None:
    messages = [{"role": "user", "content": ask(rng)}]
    if rng.random() < 0.4:  # a long system prompt repeated: the prompt caches
        messages.insert(0, {"role": "system", "content": SYSTEM})
    body = {"model": SMOL, "messages": messages, "max_tokens": rng.randint(8, 32), "temperature": rng.choice([0, 0.8])}
    if rng.random() < 0.5:
        await s.call("chat", "POST", "/v1/chat/completions", body)
    else:
        body.update(stream=True, stream_options={"include_usage": True})
        await s.call("chat, streamed", "POST", "/v1/chat/completions", body)


async def chat_structured(s: Session, rng: random.Random) -> None:
    """A json_schema answer, or a tool call forced by name (or `required`)."""
    body: dict[str, Any] = {"model": SMOL, "messages": [{"role": "user", "content": ask(rng)}], "max_tokens": 64}
    if rng.random() < 0.5:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
        await s.call("chat, json_schema", "POST", "/v1/chat/completions", body)
        return
    body["tools"] = [{"type": "function", "function": WEATHER}]
    body["tool_choice"] = rng.choice(["required", {"type": "function", "function": {"name": "get_weather"}}])
    body["stream"] = rng.random() < 0.5
    answer = await s.call("chat, forced tool", "POST", "/v1/chat/completions", body)
    finish = answer["choices"][0]["finish_reason"] if isinstance(answer, dict) else None
    if finish not in (None, "tool_calls", "length"):  # length: the arguments outgrew max_tokens
        s._anomaly(f"chat, forced tool: finish_reason {finish!r}, not tool_calls")


async def cut_stream(s: Session, rng: random.Random) -> None:
    """A long answer the client hangs up on after a few events, on each streaming API."""
    hi = [{"role": "user", "content": ask(rng)}]
    path, body = rng.choice(
        [
            ("/v1/chat/completions", {"model": SMOL, "messages": hi, "max_tokens": 300}),
            ("/v1/completions", {"model": rng.choice([SMOL, GEMMA]), "prompt": "Once upon a time", "max_tokens": 300}),
            ("/v1/responses", {"model": SMOL, "input": ask(rng), "max_output_tokens": 300, "store": False}),
            ("/v1/messages", {"model": SMOL, "messages": hi, "max_tokens": 300}),
        ]
    )
    await s.call("stream, cut", "POST", path, {**body, "stream": True}, cut_after=rng.randint(2, 5))


async def completion(s: Session, rng: random.Random) -> None:
    model = rng.choice([SMOL, GEMMA])
    prompt = f"Once upon a time, number {rng.randrange(1000)} said"
    stream = rng.random() < 0.5
    body = {"model": model, "prompt": prompt, "max_tokens": rng.randint(8, 24), "stream": stream}
    await s.call(f"completion ({model}){', streamed' if stream else ''}", "POST", "/v1/completions", body)


async def embeddings(s: Session, rng: random.Random) -> None:
    texts = [ask(rng) for _ in range(rng.randint(1, 3))]
    await s.call("embeddings", "POST", "/v1/embeddings", {"model": SMOL, "input": texts})


async def responses(s: Session, rng: random.Random) -> None:
    """Stored, continued (streamed or not), retrieved, its input items, deleted, then gone."""
    first = await s.call(
        "response, stored",
        "POST",
        "/v1/responses",
        {"model": SMOL, "input": ask(rng), "instructions": RULE, "max_output_tokens": 16},
    )
    if not isinstance(first, dict):
        return
    stream = rng.random() < 0.5
    await s.call(
        "response, continued",
        "POST",
        "/v1/responses",
        {
            "model": SMOL,
            "input": "And why?",
            "previous_response_id": first["id"],
            "max_output_tokens": 16,
            "stream": stream,
        },
    )
    await s.call("response, retrieved", "GET", f"/v1/responses/{first['id']}")
    await s.call("response, input items", "GET", f"/v1/responses/{first['id']}/input_items")
    await s.call("response, deleted", "DELETE", f"/v1/responses/{first['id']}")
    await s.call("response, deleted: 404", "GET", f"/v1/responses/{first['id']}", expect=404)


async def response_stream(s: Session, rng: random.Random) -> None:
    body = {"model": SMOL, "input": ask(rng), "max_output_tokens": rng.randint(8, 24), "store": False, "stream": True}
    await s.call("response, streamed", "POST", "/v1/responses", body)


async def messages(s: Session, rng: random.Random) -> None:
    body: dict[str, Any] = {
        "model": SMOL,
        "max_tokens": rng.randint(8, 32),
        "system": RULE,
        "messages": [{"role": "user", "content": ask(rng)}],
    }
    if rng.random() < 0.25:
        tool = {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
        body["tools"] = [tool]
        body["tool_choice"] = {"type": "tool", "name": "get_weather"}
    if rng.random() < 0.3:
        del body["max_tokens"]
        await s.call("messages: count_tokens", "POST", "/v1/messages/count_tokens", body)
        return
    stream = rng.random() < 0.5
    await s.call(f"messages{', streamed' if stream else ''}", "POST", "/v1/messages", {**body, "stream": stream})


async def reads(s: Session, rng: random.Random) -> None:
    path = rng.choice(["/v1/models", f"/v1/models/{GEMMA}", "/health", "/metrics"])
    await s.call(f"GET {path}", "GET", path)


def _mistakes(rng: random.Random) -> list[tuple[str, str, Any, int, str]]:
    """(kind, path, body, expected status, key) of the wrong requests; a body of bytes is sent as
    it is, no body is a GET."""
    hi = [{"role": "user", "content": ask(rng)}]
    chat = {"model": SMOL, "messages": hi, "max_tokens": 8}
    too_long = [{"role": "user", "content": TOO_LONG}]
    nope = {"name": "x", "schema": {"$ref": "#/nope"}}
    return [
        ("malformed JSON", "/v1/chat/completions", b'{"model": "x",', 400, "main"),
        ("malformed JSON", "/v1/messages", b"{'single': 'quotes'}", 400, "main"),
        ("unknown model", "/v1/completions", {"model": "no-such-model", "prompt": "Hi"}, 404, "main"),
        ("unknown model", "/v1/messages/count_tokens", {"model": "no-such-model", "messages": hi}, 404, "main"),
        ("prompt over the context", "/v1/chat/completions", {**chat, "messages": too_long}, 400, "main"),
        ("prompt over the context", "/v1/messages", {**chat, "messages": too_long}, 400, "main"),
        ("prompt over the context", "/v1/embeddings", {"model": SMOL, "input": TOO_LONG}, 400, "main"),
        (
            "bad schema",
            "/v1/chat/completions",
            {**chat, "response_format": {"type": "json_schema", "json_schema": nope}},
            400,
            "main",
        ),
        (
            "bad schema",
            "/v1/responses",
            {"model": SMOL, "input": "Hi", "text": {"format": {"type": "json_schema", **nope}}},
            400,
            "main",
        ),
        ("chat on a base model", "/v1/chat/completions", {**chat, "model": GEMMA}, 400, "main"),
        ("max_tokens missing", "/v1/messages", {"model": SMOL, "messages": hi}, 400, "main"),
        (
            "unknown previous_response_id",
            "/v1/responses",
            {"model": SMOL, "input": "Hi", "previous_response_id": "resp_unknown"},
            404,
            "main",
        ),
        ("body over max_body_bytes", "/v1/embeddings", {"model": SMOL, "input": "a " * MAX_BODY_BYTES}, 413, "main"),
        ("a model the key may not use", "/v1/completions", {"model": GEMMA, "prompt": "Hi"}, 404, "limited"),
        ("wrong key", "/v1/chat/completions", chat, 401, "wrong"),
        ("wrong key", "/v1/messages", chat, 401, "wrong"),
        ("revoked key", "/v1/embeddings", {"model": SMOL, "input": "Hi"}, 401, "revoked"),
        ("wrong key", "/v1/models", None, 401, "wrong"),
        ("unknown response", "/v1/responses/resp_unknown", None, 404, "main"),
    ]


async def mistake(s: Session, rng: random.Random) -> None:
    kind, path, body, status, key = rng.choice(_mistakes(rng))
    raw = body if isinstance(body, bytes) else None
    method = "GET" if body is None else "POST"
    await s.call(f"error: {kind}", method, path, None if raw else body, expect=status, key=key, raw=raw)


async def swap_models(s: Session, rng: random.Random) -> None:
    """Load or unload a model by the admin API (the idle check and max_loaded_models swap others)."""
    path, model = rng.choice(
        [
            ("/admin/load", SMOL),
            ("/admin/load", GEMMA),
            ("/admin/unload", SMOL),
            ("/admin/unload", GEMMA),
            ("/admin/unload", "all"),
        ]
    )
    await s.call(f"admin: {path.removeprefix('/admin/')} {model}", "POST", path, {"model": model}, key="admin")


Scenario = Callable[[Session, random.Random], Awaitable[None]]
SCENARIOS: list[tuple[int, Scenario]] = [
    (10, chat),
    (4, chat_structured),
    (3, cut_stream),
    (5, completion),
    (2, embeddings),
    (2, responses),
    (2, response_stream),
    (5, messages),
    (3, reads),
    (5, mistake),
    (1, swap_models),
]
