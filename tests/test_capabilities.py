"""What each model can do, read from its GGUF header, its template's markup, its settings and its
projector: chat and tools, thinking, vision, embeddings, rerank, fill-in-the-middle; shown by the
models table (the console's page, `manage.py models`) and Ollama's /api/show."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from inference.config import load_config
from inference.runtime.catalog import ModelFile
from inference.selectors.capabilities import model_capabilities
from tests.gguf_files import write_fim_copy, write_projector, write_reranker, write_synthetic, write_with_metadata

TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("config")
    (folder / "config.json").write_text(json.dumps({"model_manager": {"models_directory": str(folder)}}))
    return load_config(folder / "config.json").model_manager.defaults


def model(path: Path, projector: Path | None = None) -> ModelFile:
    return ModelFile(path.stem, path, path.stat().st_size, path.stat().st_mtime, projector)


def test_a_chat_model_chats_with_tools_and_sees_with_a_projector(smollm2_file: Path, tmp_path: Path, defaults) -> None:
    assert model_capabilities(model(smollm2_file), defaults) == ["chat", "tools"]
    projector = write_projector(tmp_path / "mmproj.gguf")
    assert model_capabilities(model(smollm2_file, projector), defaults) == ["chat", "tools", "vision"]


def test_a_template_that_writes_thinking_markers_thinks(smollm2_file: Path, defaults) -> None:
    qwen3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
    assert model_capabilities(model(smollm2_file), replace(defaults, chat_template=qwen3)) == [
        "chat",
        "tools",
        "thinking",
    ]


def test_a_base_model_without_a_template_only_completes(tmp_path: Path, defaults) -> None:
    assert model_capabilities(model(write_synthetic(tmp_path / "base.gguf")), defaults) == []
    named_format = replace(defaults, chat_format="chatml")
    assert model_capabilities(model(write_synthetic(tmp_path / "base.gguf")), named_format) == ["chat", "tools"]


def test_fill_in_the_middle_embeddings_and_rerank_come_from_the_header(
    smollm2_file: Path, tmp_path: Path, defaults
) -> None:
    fim = write_fim_copy(smollm2_file, tmp_path / "coder.gguf")
    assert model_capabilities(model(fim), defaults) == ["chat", "tools", "fill-in-the-middle"]
    embedder = write_with_metadata(smollm2_file, tmp_path / "embedder.gguf", {"llama.pooling_type": 1})
    assert "embeddings" in model_capabilities(model(embedder), defaults)
    reranker = write_reranker(tmp_path / "reranker.gguf", smollm2_file)
    assert "rerank" in model_capabilities(model(reranker), defaults)
    assert "embeddings" not in model_capabilities(model(reranker), defaults)
    assert model_capabilities(model(smollm2_file), replace(defaults, reranker="yes_no"))[-1] == "rerank"


def test_an_unreadable_file_says_nothing_but_what_its_projector_gives(tmp_path: Path, defaults) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(10))
    assert model_capabilities(model(broken), defaults) == []
    assert model_capabilities(model(broken, tmp_path / "mmproj.gguf"), defaults) == ["vision"]
