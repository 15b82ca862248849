"""Per-model sampling defaults (config.json's temperature, top_p, top_k, min_p, seed): they apply
where a request leaves a setting out; a request's own values win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.test import AsyncClient

from inference.config import ConfigError, load_config
from inference.runtime.jobs import Sampling
from tests.conftest import SMOLLM2, link_model


def test_a_request_s_values_win_over_the_defaults() -> None:
    defaults = {"temperature": 0.0, "top_p": 0.5, "top_k": 7, "min_p": 0.1, "seed": 42}
    assert Sampling().with_defaults(defaults) == Sampling(temperature=0.0, top_p=0.5, top_k=7, min_p=0.1, seed=42)
    given = Sampling(temperature=1.2, seed=3, repeat_penalty=1.1)
    assert given.with_defaults(defaults) == Sampling(
        temperature=1.2, top_p=0.5, top_k=7, min_p=0.1, seed=3, repeat_penalty=1.1
    )


def test_the_defaults_are_llama_cpp_server_s_and_per_model(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    assert load_config(path).model_manager.defaults.sampling_defaults() == {
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "seed": None,
    }
    path.write_text(json.dumps({"model_manager": {"temperature": 0, "seed": 7, "models": {"m": {"top_k": 1}}}}))
    manager = load_config(path).model_manager
    assert manager.settings_for("m").sampling_defaults() == {
        "temperature": 0,
        "top_p": 0.95,
        "top_k": 1,
        "min_p": 0.05,
        "seed": 7,
    }


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        ({"temperature": -0.1}, "model_manager.temperature", "≥ 0"),
        ({"top_p": 1.5}, "model_manager.top_p", "≤ 1"),
        ({"min_p": "low"}, "model_manager.min_p", "a number"),
        ({"top_k": 0.5}, "model_manager.top_k", "integer"),
        ({"seed": -1}, "model_manager.seed", "≥ 0"),
        ({"models": {"m": {"temperature": True}}}, "model_manager.models.m.temperature", "a number"),
    ],
)
def test_bad_sampling_defaults_are_refused(tmp_path: Path, settings: dict, key: str, problem: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_manager": settings}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: {key}: ") and problem in str(error.value)


async def ran_with(model: str, **body: object) -> tuple[float, float]:
    """The temperature and top_p a Responses API answer says it ran with."""
    response = await AsyncClient().post(
        "/v1/responses",
        {"model": model, "input": "Hi", "max_output_tokens": 2, **body},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    return response.json()["temperature"], response.json()["top_p"]


@pytest.mark.slow
async def test_a_request_without_settings_runs_with_the_model_s(
    use_config, models_dir: Path, smollm2_file: Path
) -> None:
    link_model(smollm2_file, models_dir, "smollm-cool")
    use_config(temperature=0.0, top_p=0.5, models={"smollm-cool": {"temperature": 0.3}})
    assert await ran_with(SMOLLM2) == (0.0, 0.5)
    assert await ran_with("smollm-cool") == (0.3, 0.5)
    assert await ran_with("smollm-cool", temperature=0.7, top_p=0.9) == (0.7, 0.9)
