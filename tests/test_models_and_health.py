"""GET /health, GET /v1/models and /v1/models/{id}, and JSON answers for unknown URLs/methods."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.test import AsyncClient

from tests.conftest import SMOLLM2, link_model, validate_openai


async def test_models_lists_every_gguf_file(use_config, models_dir: Path, smollm2_file: Path) -> None:
    link_model(smollm2_file, models_dir, "second-model")
    (models_dir / "readme.txt").write_text("not a model")
    response = await AsyncClient().get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    validate_openai("ListModelsResponse", body)
    assert [model["id"] for model in body["data"]] == [SMOLLM2, "second-model"]
    created = body["data"][0]["created"]
    assert created == int(os.stat(models_dir / f"{SMOLLM2}.gguf").st_mtime)
    assert {model["object"] for model in body["data"]} == {"model"}


async def test_one_model_by_id_with_or_without_extension(use_config) -> None:
    for model_id in (SMOLLM2, f"{SMOLLM2}.gguf"):
        response = await AsyncClient().get(f"/v1/models/{model_id}")
        assert response.status_code == 200
        validate_openai("Model", response.json())
        assert response.json()["id"] == SMOLLM2
    missing = await AsyncClient().get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_missing_models_directory_gives_an_empty_list(use_config, models_dir: Path) -> None:
    shutil.rmtree(models_dir)
    response = await AsyncClient().get("/v1/models")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}
    health = await AsyncClient().get("/health")
    assert health.status_code == 200


async def test_health_reports_loaded_models(use_config) -> None:
    client = AsyncClient()
    before = (await client.get("/health")).json()
    assert before["status"] == "ok"
    assert before["loaded_models"] == [] and before["models"] == {}
    assert isinstance(before["uptime"], float) and before["uptime"] >= 0
    chat = await client.post(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        content_type="application/json",
    )
    assert chat.status_code == 200
    after = (await client.get("/health")).json()
    assert after["loaded_models"] == [SMOLLM2]
    model = after["models"][SMOLLM2]
    assert model["state"] == "loaded"
    assert (model["in_flight"], model["queued"]) == (0, 0)
    assert model["idle_seconds"] >= 0


async def test_unknown_url_and_wrong_method_answer_in_json(use_config) -> None:
    client = AsyncClient()
    unknown = await client.get("/v2/nothing")
    assert unknown.status_code == 404
    validate_openai("ErrorResponse", unknown.json())
    wrong_method = await client.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    validate_openai("ErrorResponse", wrong_method.json())
    assert "GET" in wrong_method.json()["error"]["message"]
    post_health = await client.post("/health")
    assert post_health.status_code == 405


@pytest.mark.slow
async def test_aliases_name_models_for_clients_that_ask_for_other_names(
    use_config, models_dir: Path, smollm2_file: Path
) -> None:
    link_model(smollm2_file, models_dir, "shadow")
    use_config(aliases={"gpt-4o-mini": f"{SMOLLM2}.gguf", "shadow": SMOLLM2, "gone": "nothing-here"})
    client = AsyncClient()
    listed = [model["id"] for model in (await client.get("/v1/models")).json()["data"]]
    assert listed == [SMOLLM2, "shadow", "gpt-4o-mini"]  # models first; a dangling alias is not listed
    one = (await client.get("/v1/models/gpt-4o-mini")).json()
    assert one["id"] == "gpt-4o-mini"

    chat = await client.post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        content_type="application/json",
    )
    assert chat.status_code == 200
    assert chat.json()["model"] == SMOLLM2  # as OpenAI answers with the model an alias points at

    missing = (await client.get("/v1/models/gone")).json()["error"]
    assert missing["code"] == "model_not_found"
    assert "The model 'nothing-here' (which the alias 'gone' names) does not exist" in missing["message"]
