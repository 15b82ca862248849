"""The official openai SDK works against the server unchanged."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import SMOLLM2, DaphneServer


@pytest.fixture
def sdk(daphne_server: DaphneServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daphne_server.url}/v1", api_key="not-needed", max_retries=0)


def test_models_list(sdk: openai.OpenAI) -> None:
    assert SMOLLM2 in [model.id for model in sdk.models.list()]
    assert sdk.models.retrieve(SMOLLM2).id == SMOLLM2


def test_chat_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        max_tokens=16,
        temperature=0,
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 16 and completion.usage.prompt_tokens > 0


def test_streaming_chat_completion(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=SMOLLM2,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_errors_arrive_as_sdk_exceptions(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=SMOLLM2, messages=[])
    assert bad.value.param == "messages"
