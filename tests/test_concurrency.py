"""A real daphne server: long streams never block other requests; disconnects stop generation."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from tests.conftest import SMOLLM2, DaphneServer

LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "ignore_eos": True}


@asynccontextmanager
async def open_stream(server: DaphneServer, **body) -> AsyncIterator[AsyncIterator[dict]]:
    """Stream a chat completion; yields an iterator of its decoded chunks. Leaving hangs up."""
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        async with client.stream("POST", "/v1/chat/completions", json={"stream": True, **body}) as response:
            assert response.status_code == 200

            async def chunks() -> AsyncIterator[dict]:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield json.loads(line[6:])

            yield chunks()


async def model_status(client: httpx.AsyncClient, model: str) -> dict:
    return (await client.get("/health")).json()["models"].get(model, {})


async def wait_until_idle(client: httpx.AsyncClient, model: str, seconds: float = 10) -> dict:
    for _ in range(int(seconds / 0.05)):
        status = await model_status(client, model)
        if status.get("in_flight") == 0 and status.get("queued") == 0:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} still busy: {status}")


async def test_health_and_models_answer_while_a_long_stream_runs(daphne_server: DaphneServer) -> None:
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=10) as client:
        async with open_stream(daphne_server, model=SMOLLM2, max_tokens=1500, **LONG) as chunks:
            await anext(chunks)
            await anext(chunks)
            health = await client.get("/health")
            models = await client.get("/v1/models")
            assert health.status_code == 200 and models.status_code == 200
            assert health.json()["models"][SMOLLM2]["in_flight"] == 1  # the stream is still running
            later = await anext(chunks)
            assert later["choices"][0]["finish_reason"] is None
        await wait_until_idle(client, SMOLLM2)


async def two_clients(server: DaphneServer, model: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Two streams on one model, the second started once the first has a token: the order in
    which their pieces arrived, and each one's text and finish reason."""
    order: list[str] = []

    async def client(name: str, started: asyncio.Event | None) -> tuple[str, str]:
        async with open_stream(server, model=model, max_tokens=48, **LONG) as chunks:
            texts = []
            async for chunk in chunks:
                if started and not started.is_set():
                    started.set()
                if chunk["choices"][0]["delta"].get("content"):
                    order.append(name)
                    texts.append(chunk["choices"][0]["delta"]["content"])
                finish = chunk["choices"][0]["finish_reason"]
            return "".join(texts), finish

    first_started = asyncio.Event()
    first = asyncio.create_task(client("first", first_started))
    await first_started.wait()
    second = asyncio.create_task(client("second", None))
    return order, list(await asyncio.gather(first, second))


async def test_two_clients_on_one_model_decode_together_and_completely(daphne_server: DaphneServer) -> None:
    order, results = await two_clients(daphne_server, SMOLLM2)
    assert [finish for _, finish in results] == ["length", "length"]
    assert all(text for text, _ in results)
    # Batched: the second answer began before the first one ended.
    assert order.index("second") < len(order) - 1 - order[::-1].index("first")


async def test_with_parallel_1_clients_are_served_in_turn(daphne_server: DaphneServer) -> None:
    order, results = await two_clients(daphne_server, "smollm-serial")
    assert [finish for _, finish in results] == ["length", "length"]
    # FIFO on one slot: every piece of the first answer came before any of the second.
    assert order == ["first"] * order.count("first") + ["second"] * order.count("second")


async def test_requests_to_another_model_do_not_wait(daphne_server: DaphneServer) -> None:
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=60) as client:
        async with open_stream(daphne_server, model=SMOLLM2, max_tokens=1500, **LONG) as chunks:
            await anext(chunks)
            await anext(chunks)
            other = await client.post(
                "/v1/chat/completions",
                json={"model": "smollm-copy", "max_tokens": 8, **LONG},
            )
            assert other.status_code == 200
            assert other.json()["usage"]["completion_tokens"] == 8
            assert (await model_status(client, SMOLLM2))["in_flight"] == 1  # still streaming
        await wait_until_idle(client, SMOLLM2)


async def test_a_client_that_hangs_up_stops_its_generation(daphne_server: DaphneServer) -> None:
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=60) as client:
        async with open_stream(daphne_server, model=SMOLLM2, max_tokens=2000, seed=4242, **LONG) as chunks:
            for _ in range(3):
                await anext(chunks)
        await wait_until_idle(client, SMOLLM2)
        follow_up = await client.post("/v1/chat/completions", json={"model": SMOLLM2, "max_tokens": 4, **LONG})
        assert follow_up.status_code == 200
    cancelled = re.findall(rf"chat on {re.escape(SMOLLM2)}: cancelled after (\d+) tokens", daphne_server.log())
    assert cancelled, daphne_server.log()[-2000:]
    assert int(cancelled[-1]) < 50  # of the 2000 asked for


@asynccontextmanager
async def queued_behind_a_stream(
    server: DaphneServer, client: httpx.AsyncClient, streamed_tokens: int, queued_tokens: int
) -> AsyncIterator[asyncio.Task]:
    """A stream on smollm-serial (one slot) and a request queued behind it, whose task this
    yields; leaving hangs the stream up."""
    async with open_stream(server, model="smollm-serial", max_tokens=streamed_tokens, **LONG) as running:
        await anext(running)
        queued = asyncio.create_task(
            client.post("/v1/chat/completions", json={"model": "smollm-serial", "max_tokens": queued_tokens, **LONG})
        )
        while (await model_status(client, "smollm-serial")).get("queued") != 1:
            await asyncio.sleep(0.02)
        yield queued


async def test_a_client_that_hangs_up_while_queued_never_runs(daphne_server: DaphneServer) -> None:
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=60) as client:
        async with queued_behind_a_stream(daphne_server, client, 400, 1000) as queued:
            queued.cancel()  # hang up while waiting in the queue
            await asyncio.sleep(0.2)
        status = await wait_until_idle(client, "smollm-serial")
        assert status["state"] == "loaded"
    assert "length after 1000 tokens" not in daphne_server.log()


async def test_a_non_streaming_client_that_hangs_up_stops_its_generation(daphne_server: DaphneServer) -> None:
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=60) as client:
        waiting = asyncio.create_task(
            client.post("/v1/chat/completions", json={"model": SMOLLM2, "max_tokens": 3000, "seed": 99, **LONG})
        )
        while (await model_status(client, SMOLLM2)).get("in_flight") != 1:
            await asyncio.sleep(0.02)
        waiting.cancel()
        await wait_until_idle(client, SMOLLM2)
    cancelled = re.findall(rf"chat on {re.escape(SMOLLM2)}: cancelled after (\d+) tokens", daphne_server.log())
    assert cancelled and int(cancelled[-1]) < 1000  # of the 3000 asked for


async def test_every_generated_token_reaches_the_client_in_order(daphne_server: DaphneServer) -> None:
    """Streamed text equals the non-streamed answer, token for token, with two models streaming.

    Each answer comes from a freshly loaded model: llama.cpp's numerics, hence greedy text,
    depend on what else its KV cache holds (see docs/performance.md, Batching).
    """
    request = {
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 300,
        "ignore_eos": True,
        "temperature": 0,
    }
    models = (SMOLLM2, "smollm-copy")

    async def streamed(model: str) -> tuple[str, int, int]:
        async with open_stream(daphne_server, model=model, stream_options={"include_usage": True}, **request) as chunks:
            pieces, usage = [], None
            async for chunk in chunks:
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    pieces.append(chunk["choices"][0]["delta"]["content"])
                usage = chunk.get("usage") or usage
        return "".join(pieces), len(pieces), usage["completion_tokens"]

    token = (daphne_server.config.parent / ".admin_token").read_text().strip()
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=120) as client:

        async def unload(model: str) -> None:
            response = await client.post(
                "/admin/unload", json={"model": model}, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200

        expected = []
        for model in models:
            await unload(model)
            expected.append((await client.post("/v1/chat/completions", json={"model": model, **request})).json())
            await unload(model)
    results = await asyncio.gather(*(streamed(model) for model in models))
    for (text, pieces, tokens), answer in zip(results, expected):
        assert tokens == answer["usage"]["completion_tokens"] == 300
        assert text == answer["choices"][0]["message"]["content"]
        assert pieces >= tokens - 10  # one piece per token, but for the few held back at a stop-sequence prefix


async def test_a_hung_up_stream_frees_its_slot_for_a_waiting_request(daphne_server: DaphneServer) -> None:
    """smollm-serial has one slot: a request waiting for it starts as soon as the stream ends."""
    async with httpx.AsyncClient(base_url=daphne_server.url, timeout=60) as client:
        async with queued_behind_a_stream(daphne_server, client, 3000, 8) as waiting:
            pass
        answer = await asyncio.wait_for(waiting, timeout=30)  # far less than 3000 tokens would take
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 8
