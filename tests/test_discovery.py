"""Which files are models, and reading their GGUF headers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference.runtime.catalog import GGUFError, ModelsDirectoryMissing, read_gguf_info, scan, strip_suffix
from tests.gguf_files import write_random, write_synthetic, write_truncated


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"GGUF")


def test_every_gguf_file_is_a_model_named_by_its_stem(tmp_path: Path) -> None:
    touch(tmp_path, "b-model.gguf", "A-Model.gguf", "notes.txt", "weights.bin", ".hidden.gguf")
    (tmp_path / "nested").mkdir()
    touch(tmp_path / "nested", "deep.gguf")
    models = scan(tmp_path)
    assert list(models) == ["A-Model", "b-model"]
    assert models["A-Model"].path == tmp_path / "A-Model.gguf"
    assert models["A-Model"].size_bytes == 4


def test_split_models_are_listed_once_and_projectors_not_at_all(tmp_path: Path) -> None:
    touch(tmp_path, "big-00001-of-00002.gguf", "big-00002-of-00002.gguf", "mmproj-vision.gguf")
    models = scan(tmp_path)
    assert list(models) == ["big"]
    assert models["big"].path.name == "big-00001-of-00002.gguf"
    assert models["big"].size_bytes == 8


def test_symlinks_pointing_outside_are_not_offered(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    inside = tmp_path / "models"
    outside.mkdir()
    inside.mkdir()
    touch(outside, "secret.gguf")
    touch(inside, "real.gguf")
    os.symlink(outside / "secret.gguf", inside / "escape.gguf")
    os.symlink(inside / "real.gguf", inside / "alias.gguf")
    assert list(scan(inside)) == ["alias", "real"]


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelsDirectoryMissing):
        scan(tmp_path / "absent")


def test_gguf_suffix_is_optional_and_only_stripped_once() -> None:
    assert strip_suffix("model.gguf") == "model"
    assert strip_suffix("model") == "model"
    assert strip_suffix("model.gguf.gguf") == "model.gguf"
    assert strip_suffix("model.GGUF") == "model.GGUF"


def test_header_of_the_real_model(smollm2_file: Path) -> None:
    info = read_gguf_info(smollm2_file)
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert (info.quantization, info.parameter_count) == ("Q4_1", 134_515_008)


def test_header_of_a_synthetic_file(tmp_path: Path) -> None:
    info = read_gguf_info(write_synthetic(tmp_path / "tiny.gguf", context_length=321))
    assert (info.architecture, info.context_length, info.chat_template) == ("llama", 321, None)
    assert (info.quantization, info.parameter_count) == ("", 16)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp, real: write_random(tmp / "noise.gguf"), "not a GGUF file"),
        (lambda tmp, real: write_truncated(real, tmp / "cut.gguf", 1000), "truncated"),
        (lambda tmp, real: write_truncated(real, tmp / "empty.gguf", 0), "not a GGUF"),
    ],
)
def test_broken_headers_raise_with_a_reason(tmp_path: Path, smollm2_file: Path, make, reason: str) -> None:
    with pytest.raises(GGUFError, match=reason):
        read_gguf_info(make(tmp_path, smollm2_file))
