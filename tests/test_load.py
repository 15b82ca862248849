"""Load on a real server: 200 requests, 8 at a time, streamed and not, chat and text completions,
across two models. Every answer is complete, every request recorded once, memory flat."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOLLM2, DaphneServer, ServerFactory

MODELS = (SMOLLM2, "smollm-twin")
CONCURRENCY = 8
WARM_UP = 40
TOTAL = 200


@dataclass
class Answer:
    completion_id: str
    text: str
    finish_reason: str
    completion_tokens: int
    pieces: int  # content chunks when streamed, else 1


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def request_body(index: int) -> tuple[str, dict]:
    """The index-th request: a model, an endpoint, streamed or not, a prompt of its own."""
    rng = random.Random(index)
    body: dict = {"model": MODELS[index % 2], "max_tokens": rng.randint(4, 24), "stream": rng.random() < 0.5}
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.75:
        body["messages"] = [{"role": "user", "content": f"Name a colour. ({index})"}]
        return "/v1/chat/completions", body
    body["prompt"] = f"Once upon a time, number {index} said"
    return "/v1/completions", body


def text_of(choice: dict) -> str:
    return choice.get("text") or (choice.get("message") or choice.get("delta") or {}).get("content") or ""


async def send(client: httpx.AsyncClient, index: int) -> Answer:
    path, body = request_body(index)
    if not body["stream"]:
        response = await client.post(path, json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        choice = answer["choices"][0]
        return Answer(answer["id"], text_of(choice), choice["finish_reason"], answer["usage"]["completion_tokens"], 1)
    chunks = []
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]", chunks[-3:]
    parsed = [json.loads(chunk) for chunk in chunks[:-1]]
    choices = [chunk["choices"][0] for chunk in parsed if chunk["choices"]]
    texts = [text_of(choice) for choice in choices]
    return Answer(
        parsed[0]["id"],
        "".join(texts),
        next(choice["finish_reason"] for choice in choices if choice["finish_reason"]),
        parsed[-1]["usage"]["completion_tokens"],
        sum(1 for text in texts if text),
    )


async def run_requests(url: str, indexes: range) -> list[Answer]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(client: httpx.AsyncClient, index: int) -> Answer:
        async with limit:
            return await send(client, index)

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(one(client, index) for index in indexes))


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    with server_factory("load", names=MODELS, n_ctx=2048, parallel=4) as server:
        yield server


def test_200_mixed_requests_are_all_answered_recorded_once_and_memory_stays_flat(server: DaphneServer) -> None:
    answers = asyncio.run(run_requests(server.url, range(WARM_UP)))
    warm_rss = process_rss_mb(server.process.pid)
    answers += asyncio.run(run_requests(server.url, range(WARM_UP, TOTAL)))
    final_rss = process_rss_mb(server.process.pid)

    assert len(answers) == TOTAL
    for index, answer in enumerate(answers):
        _, body = request_body(index)
        assert answer.finish_reason in ("stop", "length"), answer
        assert 1 <= answer.completion_tokens <= body["max_tokens"], answer
        if answer.finish_reason == "length":
            assert answer.completion_tokens == body["max_tokens"], answer
        if body["stream"]:  # one chunk per token, none lost (a token may decode to no text)
            assert answer.pieces <= answer.completion_tokens, answer

    rows = server.rows("SELECT completion_id, status, completion_tokens FROM inference_requestrecord")
    recorded = {completion_id: (status, tokens) for completion_id, status, tokens in rows}
    assert len(rows) == len(recorded) == TOTAL  # one row per request, none twice
    assert recorded == {answer.completion_id: ("ok", answer.completion_tokens) for answer in answers}
    assert final_rss - warm_rss < 30, (warm_rss, final_rss)
