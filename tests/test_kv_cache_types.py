"""KV cache element types per model (`type_k`, `type_v`: f16, q8_0, q4_0): validated in config.json,
settable in the admin, counted in the memory estimate, and given to llama.cpp, whose cache then
takes less memory per cell while the model generates as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.config import ConfigError, load_config
from inference.models import DiscoveredModel
from inference.runtime.engine import GenerationEngine
from inference.runtime.gguf_header import read_gguf_info
from inference.runtime.jobs import ChatMessage, Sampling
from inference.runtime.memory import memory_estimate
from inference.runtime.prompt_store import identity
from inference.runtime.settings import LoadSettings
from tests.chat_prompts import smollm2_chat
from tests.test_batching import run_all


def config_with(tmp_path: Path, **settings: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_manager": {"models_directory": str(tmp_path), **settings}}))
    return path


def test_the_types_are_read_per_model_and_refused_where_they_cannot_work(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path, models={"small": {"type_k": "q8_0", "type_v": "q4_0"}}))
    assert (config.model_manager.defaults.type_k, config.model_manager.defaults.type_v) == ("f16", "f16")
    small = config.model_manager.settings_for("small")
    assert (small.type_k, small.type_v) == ("q8_0", "q4_0")
    with pytest.raises(ConfigError, match="type_k"):
        load_config(config_with(tmp_path, type_k="q5_1"))
    with pytest.raises(ConfigError, match="type_v q8_0 needs flash attention"):
        load_config(config_with(tmp_path, type_v="q8_0", flash_attn=False))


def test_the_admins_setting_overrides_config_json(tmp_path: Path) -> None:
    overrides = DiscoveredModel(name="small", type_k="q4_0").setting_overrides()
    assert overrides == {"type_k": "q4_0"}
    settings = load_config(config_with(tmp_path)).model_manager.settings_for("small", overrides)
    assert (settings.type_k, settings.type_v) == ("q4_0", "f16")


def test_the_memory_estimate_counts_the_kv_cache_in_its_types(smollm2_file: Path) -> None:
    info = read_gguf_info(smollm2_file)

    def kv(type_k: str, type_v: str) -> int:
        estimate = memory_estimate(info, file_bytes=1, n_ctx=8192, n_batch=512, type_k=type_k, type_v=type_v)
        return estimate.kv_cache

    assert kv("q8_0", "q8_0") == pytest.approx(kv("f16", "f16") * 34 / 64, rel=1e-6)
    assert kv("q4_0", "q4_0") == pytest.approx(kv("f16", "f16") * 18 / 64, rel=1e-6)
    assert kv("q8_0", "f16") == pytest.approx(kv("f16", "f16") * (34 / 32 + 2) / 4, rel=1e-6)


def test_the_disk_prompt_cache_is_kept_apart_per_kv_type(smollm2_file: Path) -> None:
    assert identity(smollm2_file, {"type_k": "q8_0"}) != identity(smollm2_file, {"type_k": "f16"})


@pytest.mark.slow
def test_llama_cpp_holds_a_quantized_cache_in_less_memory_and_generates(smollm2_file: Path) -> None:
    sizes, texts = {}, {}
    job = smollm2_chat([ChatMessage("user", "Name three colours.")], max_tokens=8, sampling=Sampling(temperature=0))
    for kind in ("f16", "q8_0", "q4_0"):
        settings = LoadSettings(
            n_ctx=1024, n_gpu_layers=0, n_threads=1, n_threads_batch=2, parallel=1, type_k=kind, type_v=kind
        )
        engine = GenerationEngine("smollm2", smollm2_file, settings)
        try:
            text, finished, _ = run_all(engine, {"a": job})["a"]
            texts[kind] = text
            sizes[kind] = len(engine._context.save_sequence(0))  # the sequence's KV state, as llama.cpp holds it
        finally:
            engine.close()
        assert finished.completion_tokens == 8 and text
    assert sizes["q4_0"] < sizes["q8_0"] < 0.6 * sizes["f16"]
