"""schemathesis against the server's own /openapi.json: generated requests, valid and not,
never get a 5xx or an answer that breaks the description."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tests.conftest import SMOLLM2, DaphneServer, ServerFactory
from tests.gguf_files import write_fim_copy

FIM = "SmolLM2-FIM"  # SmolLM2 with FIM tokens


@pytest.fixture(scope="module")
def small_server(server_factory: ServerFactory, smollm2_file: Path) -> Iterator[DaphneServer]:
    """A server whose context is tiny (256 tokens), so that any generated request is quick; with
    a copy of SmolLM2 that has FIM tokens, for /infill."""

    def with_fim(root: Path) -> None:
        write_fim_copy(smollm2_file, root / "models" / f"{FIM}.gguf")

    with server_factory("conformance", n_ctx=256, parallel=4, prepare=with_fim) as server:
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_generated_requests_conform(small_server: DaphneServer, mode: GenerationMode) -> None:
    # Driven by hand rather than through schemathesis' pytest plugin, which needs pytest < 9.
    # A schema-valid request may still be refused for what no schema says (a prompt longer than
    # the context, n over the model's slots, a tool message without its tool_call_id), so
    # positive data is not required to succeed; everything else is checked.
    schema = schemathesis.openapi.from_url(f"{small_server.url}/openapi.json")
    # A negated body can be megabytes (thousands of messages): past server.max_body_bytes it is
    # refused with 413 before it is parsed, which is a rejection as much as a 400 is.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    operations = [result.ok() for result in schema.get_all_operations()]
    tested: set[str] = set()
    for operation in operations:

        @settings(
            max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=small_server.url, excluded_checks=[positive_data_acceptance], timeout=120)
            tested.add(case.operation.label)

        try:
            conforms()
        except Unsatisfiable:  # no body, and any string is a valid path parameter: nothing to negate
            assert (
                mode == GenerationMode.NEGATIVE
                and not operation.get_request_payload_content_types()
                and not operation.query
            ), operation.label
    with_body = {operation.label for operation in operations if operation.get_request_payload_content_types()}
    assert {
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "POST /v1/rerank",
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
        "POST /v1/responses",
        "POST /infill",
        "POST /api/chat",
        "POST /api/generate",
        "POST /api/embed",
        "POST /api/embeddings",
        "POST /api/show",
        "POST /api/pull",
    } <= with_body  # (drf-spectacular describes no DELETE body: /api/delete's is tested in test_ollama_bad_input)
    # Negative data needs something to make wrong: a body or query parameters.
    with_input = with_body | {operation.label for operation in operations if operation.query}
    expected = {operation.label for operation in operations} if mode == GenerationMode.POSITIVE else with_input
    assert tested == expected


# A streamed answer of each streaming operation: generated requests rarely stream successfully.
STREAMED = {
    "POST /v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True},
    "POST /v1/completions": {"prompt": "Hi", "max_tokens": 2, "stream": True},
    "POST /v1/responses": {"input": "Hi", "max_output_tokens": 16, "stream": True},
    "POST /infill": {"model": FIM, "input_prefix": "def f(", "input_suffix": ")", "n_predict": 2, "stream": True},
    "POST /v1/messages": {
        "model": SMOLLM2,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "stream": True,
    },
    "POST /api/chat": {
        "model": SMOLLM2,
        "messages": [{"role": "user", "content": "Hi"}],
        "options": {"num_predict": 2},
    },
    "POST /api/generate": {"model": SMOLLM2, "prompt": "Hi", "options": {"num_predict": 2}},
}
STREAM_TYPES = ("text/event-stream", "application/x-ndjson")  # SSE; Ollama's NDJSON


def test_streamed_answers_conform(small_server: DaphneServer) -> None:
    schema = schemathesis.openapi.from_url(f"{small_server.url}/openapi.json")
    operations = {operation.label: operation for operation in (result.ok() for result in schema.get_all_operations())}
    for label, body in STREAMED.items():
        case = operations[label].Case(body=body, media_type="application/json")
        response = case.call_and_validate(base_url=small_server.url, timeout=120)
        assert response.status_code == 200 and response.headers["content-type"][0].startswith(STREAM_TYPES), label
