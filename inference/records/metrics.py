"""This process's metrics in Prometheus' format (GET /metrics): requests and tokens, latencies,
queues, loaded models, loads. Counted as things happen; queue depths read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from inference.runtime.lifecycle import LifecycleEvent, LifecycleKind
from inference.runtime.pool import model_pool

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "llamasite_requests",
    "Requests that reached an inference endpoint, by how they ended",
    ["model", "endpoint", "status", "http_status"],
)
TOKENS = Counter(
    "llamasite_tokens",
    "Prompt and completion tokens of those requests",
    ["model", "status", "kind"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llamasite_time_to_first_token_seconds",
    "From a request's arrival to its first token",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "llamasite_request_duration_seconds",
    "From a request's arrival to its last byte",
    ["model", "endpoint"],
    buckets=_LATENCY_BUCKETS,
)
DRAFT_TOKENS = Counter(
    "llamasite_draft_tokens",
    "Tokens guessed by speculative decoding, and those the model accepted",
    ["model", "kind"],
)
UNAUTHORIZED = Counter(
    "llamasite_unauthorized_requests",
    "Requests refused with a 401 (they leave no request record)",
    ["endpoint"],
)
LOAD_DURATION = Histogram(
    "llamasite_model_load_seconds",
    "Time to load a model",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
LOAD_FAILURES = Counter("llamasite_model_load_failures", "Loads that failed", ["model"])
UNLOADS = Counter("llamasite_model_unloads", "Models unloaded, by reason", ["model", "reason"])
PROMPT_CACHE = Counter(
    "llamasite_prompt_cache_tokens",
    "Prompt tokens by where they came from: processed (none), a slot's cells (slot), "
    "the prompt cache in host RAM (ram) or on disk (disk)",
    ["model", "tier"],
)


def request_count(
    *,
    model: str,
    endpoint: str,
    status: str,
    http_status: int,
    prompt_tokens: int,
    completion_tokens: int,
    ttft_ms: float | None,
    duration_ms: float,
    cached_tokens: int = 0,
    cache_tier: str = "",
    draft_tokens_proposed: int = 0,
    draft_tokens_accepted: int = 0,
) -> None:
    """Count one finished request."""
    if model not in model_pool().catalog.available():
        model = ""  # a name from a refused request: clients must not grow the label set at will
    REQUESTS.labels(model, endpoint, status, str(http_status)).inc()
    TOKENS.labels(model, status, "prompt").inc(prompt_tokens)
    TOKENS.labels(model, status, "completion").inc(completion_tokens)
    if prompt_tokens:
        PROMPT_CACHE.labels(model, "none").inc(prompt_tokens - cached_tokens)
        if cached_tokens:
            PROMPT_CACHE.labels(model, cache_tier).inc(cached_tokens)
    DRAFT_TOKENS.labels(model, "proposed").inc(draft_tokens_proposed)
    DRAFT_TOKENS.labels(model, "accepted").inc(draft_tokens_accepted)
    if ttft_ms is not None:
        TIME_TO_FIRST_TOKEN.labels(model).observe(ttft_ms / 1000)
    REQUEST_DURATION.labels(model, endpoint).observe(duration_ms / 1000)


def exposition(accept: str) -> tuple[bytes, str]:
    """Every metric of this process in the format the scraper accepts (Prometheus' text format
    by default, OpenMetrics if asked for), and its content type."""
    encode, content_type = choose_encoder(accept)
    return encode(REGISTRY), content_type


def unauthorized_count(endpoint: str) -> None:
    UNAUTHORIZED.labels(endpoint).inc()


def lifecycle_event_count(sender: Any, event: LifecycleEvent, **kwargs: Any) -> None:
    """Receiver of `model_lifecycle`."""
    if event.kind == LifecycleKind.LOAD:
        LOAD_DURATION.labels(event.model).observe(event.duration_ms / 1000)
    elif event.kind == LifecycleKind.LOAD_FAILED:
        LOAD_FAILURES.labels(event.model).inc()
    else:
        UNLOADS.labels(event.model, event.reason).inc()


class ModelStateCollector(Collector):
    """Loaded models, and each one's running and waiting requests, as they are at scrape time."""

    def describe(self) -> list[GaugeMetricFamily]:
        # Without it the registry would collect once on registration, building the model
        # model pool in every process that loads the app (management commands too).
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        models = model_pool().status()
        loaded = GaugeMetricFamily(
            "llamasite_model_loaded", "1 for each model loaded (or loading, unloading)", labels=["model", "state"]
        )
        in_flight = GaugeMetricFamily("llamasite_requests_in_flight", "Requests being generated", labels=["model"])
        queued = GaugeMetricFamily("llamasite_queue_depth", "Requests waiting for a model", labels=["model"])
        for name, status in models.items():
            loaded.add_metric([name, str(status.state)], 1)
            in_flight.add_metric([name], status.in_flight)
            queued.add_metric([name], status.queued)
        yield from (loaded, in_flight, queued)
