"""GET /metrics in Prometheus' format: requests and tokens by model and status, latency
histograms, queue depth, loaded models, loads, failed loads, unloads and refused keys."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    HI,
    SMOLLM2,
    DaphneServer,
    ServerFactory,
    wait_for,
)
from tests.gguf_files import write_random

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[DaphneServer]:
    """A server that requires API keys and decodes one request at a time, with a broken model."""
    with server_factory(
        "metrics", prepare=with_a_broken_model, server={"require_api_key": True}, n_ctx=1024, parallel=1
    ) as server:
        yield server


def with_a_broken_model(root: Path) -> None:
    write_random(root / "models" / "broken.gguf")


@pytest.fixture(scope="module")
def key(server: DaphneServer) -> dict[str, str]:
    created = server.manage("apikey", "create", "metrics-test")
    assert created.returncode == 0, created.stderr
    return {"Authorization": f"Bearer {created.stdout.strip()}"}


def scrape(server: DaphneServer) -> dict[tuple[str, frozenset], float]:
    """Every sample: (name, labels) → value."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def post(server: DaphneServer, key: dict[str, str], **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}{CHAT}", json={"messages": HI, "max_tokens": 3, **body}, headers=key, timeout=60)


def test_requests_tokens_and_latencies_are_counted(server: DaphneServer, key: dict[str, str]) -> None:
    before = scrape(server)
    answers = [post(server, key, model=SMOLLM2).json(), post(server, key, model=SMOLLM2, temperature=0).json()]
    with httpx.stream(
        "POST",
        f"{server.url}{CHAT}",
        headers=key,
        timeout=60,
        json={
            "model": SMOLLM2,
            "messages": HI,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as streamed:
        chunks = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
    usages = [answer["usage"] for answer in answers] + [chunks[-1]["usage"]]
    after = scrape(server)

    ok = {"model": SMOLLM2, "endpoint": CHAT, "status": "ok", "http_status": "200"}
    assert value(after, "llamasite_requests_total", **ok) - value(before, "llamasite_requests_total", **ok) == 3
    for kind in ("prompt", "completion"):
        labels = {"model": SMOLLM2, "status": "ok", "kind": kind}
        counted = value(after, "llamasite_tokens_total", **labels) - value(before, "llamasite_tokens_total", **labels)
        assert counted == sum(usage[f"{kind}_tokens"] for usage in usages)
    ttft = "llamasite_time_to_first_token_seconds_count"
    assert value(after, ttft, model=SMOLLM2) - value(before, ttft, model=SMOLLM2) == 3
    duration = "llamasite_request_duration_seconds_count"
    assert (
        value(after, duration, model=SMOLLM2, endpoint=CHAT) - value(before, duration, model=SMOLLM2, endpoint=CHAT)
        == 3
    )
    # Every request of the test loaded the model at most once.
    assert value(after, "llamasite_model_load_seconds_count", model=SMOLLM2) == 1
    assert value(after, "llamasite_model_loaded", model=SMOLLM2, state="loaded") == 1


def test_refused_requests_are_counted_without_their_made_up_model_names(
    server: DaphneServer, key: dict[str, str]
) -> None:
    assert post(server, key, model="no-such-model-4711").status_code == 404
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401  # no key
    samples = scrape(server)
    assert value(samples, "llamasite_requests_total", model="", endpoint=CHAT, status="error", http_status="404") == 1
    assert not any("no-such-model-4711" in str(labels) for _, labels in samples)
    assert value(samples, "llamasite_unauthorized_requests_total", endpoint="/v1/models") == 1


def test_made_up_urls_do_not_grow_the_metrics(server: DaphneServer) -> None:
    """Labelled by the raw path, 400 unauthenticated GETs of /v1/models/<random> added ~87 KB."""
    size_before = len(httpx.get(f"{server.url}/metrics", timeout=10).content)
    label = {"endpoint": "/v1/models/{model_id}"}
    before = value(scrape(server), "llamasite_unauthorized_requests_total", **label)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        made_up = [f"/v1/models/{secrets.token_hex(8)}" for _ in range(400)]
        assert {client.get(path).status_code for path in made_up} == {401}
    samples = scrape(server)
    assert value(samples, "llamasite_unauthorized_requests_total", **label) - before == 400
    assert not any(path.rsplit("/", 1)[1] in str(labels) for path in made_up[:20] for _, labels in samples)
    assert len(httpx.get(f"{server.url}/metrics", timeout=10).content) - size_before < 1000


def test_failed_loads_and_unloads_are_counted(server: DaphneServer, key: dict[str, str]) -> None:
    assert post(server, key, model="broken").status_code == 503
    assert value(scrape(server), "llamasite_model_load_failures_total", model="broken") == 1

    assert post(server, key, model=SMOLLM2).status_code == 200
    token = (server.config.parent / ".admin_token").read_text().strip()
    unloaded = httpx.post(
        f"{server.url}/admin/unload", json={"model": SMOLLM2}, headers={"Authorization": f"Bearer {token}"}
    )
    assert unloaded.json()["unloaded"] == [SMOLLM2]
    samples = scrape(server)
    assert value(samples, "llamasite_model_unloads_total", model=SMOLLM2, reason="admin_api") == 1
    assert value(samples, "llamasite_model_loaded", model=SMOLLM2, state="loaded") == 0


def test_queue_depth_and_requests_in_flight_are_read_at_scrape_time(server: DaphneServer, key: dict[str, str]) -> None:
    long = {"model": SMOLLM2, "messages": HI, "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}{CHAT}", json=long, headers=key, timeout=60) as running:
        lines = running.iter_lines()  # kept: closing it would hang up, which cancels the generation
        next(line for line in lines if line.startswith("data: "))  # holds the only slot
        waiting = threading.Thread(target=post, args=(server, key), kwargs={"model": SMOLLM2})
        waiting.start()
        wait_for(lambda: value(scrape(server), "llamasite_queue_depth", model=SMOLLM2) == 1)
        assert value(scrape(server), "llamasite_requests_in_flight", model=SMOLLM2) == 1
    waiting.join(timeout=60)
    wait_for(lambda: value(scrape(server), "llamasite_queue_depth", model=SMOLLM2) == 0)
