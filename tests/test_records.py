"""One RequestRecord per inference request, with the counts the client was told."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from unittest import mock

import httpx
import pytest
from django.db import DatabaseError
from django.test import AsyncClient

from inference.models import DailyUsage, RequestRecord
from tests.conftest import SMOLLM2, DaphneServer

HELLO = [{"role": "user", "content": "Say hello."}]


async def post_chat(**body: Any) -> Any:
    return await AsyncClient().post(
        "/v1/chat/completions", body, content_type="application/json", headers={"User-Agent": "records-test/1.0"}
    )


async def records() -> list[RequestRecord]:
    return [record async for record in RequestRecord.objects.order_by("id")]


@pytest.mark.slow
async def test_a_completed_request_is_recorded_with_its_usage(use_config) -> None:
    body = (await post_chat(messages=HELLO, max_tokens=8, ignore_eos=True)).json()
    [record] = await records()
    assert record.completion_id == body["id"]
    assert (record.prompt_tokens, record.completion_tokens) == (
        body["usage"]["prompt_tokens"],
        body["usage"]["completion_tokens"],
    )
    assert (record.status, record.http_status, record.finish_reason) == ("ok", 200, "length")
    assert (record.model, record.endpoint, record.stream) == (SMOLLM2, "/v1/chat/completions", False)
    assert record.load_ms > 0  # this request loaded the model
    assert record.ttft_ms > 0 and record.duration_ms >= record.ttft_ms and record.queue_wait_ms >= 0
    assert record.tokens_per_second > 0
    assert record.user_agent == "records-test/1.0" and record.client_address == "127.0.0.1"
    assert record.instance == "127.0.0.1:8080"
    await post_chat(messages=HELLO, max_tokens=2)
    assert (await records())[-1].load_ms is None  # the model was already loaded


@pytest.mark.slow
async def test_a_streamed_request_is_recorded_with_its_usage(use_config) -> None:
    response = await post_chat(messages=HELLO, max_tokens=6, stream=True, stream_options={"include_usage": True})
    events = [
        json.loads(line[6:])
        for line in (b"".join([part async for part in response.streaming_content])).decode().split("\n\n")
        if line.startswith("data: {")
    ]
    usage = events[-1]["usage"]
    [record] = await records()
    assert record.stream and record.completion_id == events[0]["id"]
    assert (record.prompt_tokens, record.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])


@pytest.mark.parametrize(
    ("body", "status", "code", "model"),
    [
        ({"messages": []}, 400, "", ""),
        ({"model": "nope", "messages": HELLO}, 404, "model_not_found", "nope"),
        (
            {"model": SMOLLM2, "messages": [{"role": "user", "content": "hello " * 9000}]},
            400,
            "context_length_exceeded",
            SMOLLM2,
        ),
    ],
)
async def test_failed_requests_are_recorded(use_config, body: dict, status: int, code: str, model: str) -> None:
    response = await post_chat(**body)
    assert response.status_code == status
    [record] = await records()
    assert (record.status, record.http_status, record.error_code, record.model) == ("error", status, code, model)
    assert record.error_message == response.json()["error"]["message"]
    assert record.completion_tokens == 0


async def test_malformed_json_is_recorded_too(use_config) -> None:
    response = await AsyncClient().post("/v1/chat/completions", "{oops", content_type="application/json")
    assert response.status_code == 400
    [record] = await records()
    assert (record.status, record.http_status, record.error_code) == ("error", 400, "invalid_json")


@pytest.mark.slow
async def test_daily_rollup_follows_the_records(use_config) -> None:
    await post_chat(messages=HELLO, max_tokens=3, ignore_eos=True)
    await post_chat(messages=HELLO, max_tokens=4, ignore_eos=True)
    await post_chat(model="nope", messages=HELLO)
    usage = {row.model: row async for row in DailyUsage.objects.all()}
    assert (usage[SMOLLM2].requests, usage[SMOLLM2].completion_tokens, usage[SMOLLM2].errors) == (2, 7, 0)
    assert sum(usage[SMOLLM2].ttft_ms_histogram) == 2
    assert (usage["nope"].requests, usage["nope"].errors) == (1, 1)


@pytest.mark.slow
async def test_a_database_failure_never_fails_the_request(use_config, caplog: pytest.LogCaptureFixture) -> None:
    with mock.patch.object(RequestRecord.objects, "create", side_effect=DatabaseError("disk I/O error")):
        with caplog.at_level(logging.ERROR):
            response = await post_chat(messages=HELLO, max_tokens=2)
    assert response.status_code == 200
    assert "could not record request" in caplog.text and "disk I/O error" in caplog.text


def test_the_row_exists_before_the_last_bytes_and_a_hang_up_is_recorded(daphne_server: DaphneServer) -> None:
    def rows(completion_id: str) -> list[tuple]:
        return daphne_server.rows(
            "SELECT status, completion_tokens, http_status FROM inference_requestrecord WHERE completion_id = ?",
            completion_id,
        )

    request = {"model": SMOLLM2, "messages": HELLO, "max_tokens": 30, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{daphne_server.url}/v1/chat/completions", json=request, timeout=60) as response:
        for line in response.iter_lines():
            chunk = json.loads(line[6:]) if line.startswith("data: {") else None
            if chunk and chunk["choices"][0]["finish_reason"]:
                assert rows(chunk["id"]) == [("ok", 30, 200)]  # before [DONE] arrived

    plain = httpx.post(f"{daphne_server.url}/v1/chat/completions", json={**request, "stream": False}, timeout=60)
    assert rows(plain.json()["id"]) == [("ok", 30, 200)]

    received = 0
    with httpx.stream(
        "POST", f"{daphne_server.url}/v1/chat/completions", json={**request, "max_tokens": 2000}, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                completion_id = json.loads(line[6:])["id"]
                received += 1
                if received == 5:
                    break
    for _ in range(200):
        if rows(completion_id):
            break
        time.sleep(0.05)
    [(status, tokens, http_status)] = rows(completion_id)
    assert (status, http_status) == ("cancelled", 200)
    # What was handed to the client, not the 2000 asked: the hang-up is noticed a few tokens
    # later (those already in the socket buffers), ~4 on an idle 2-core machine.
    assert received <= tokens <= received + 40
