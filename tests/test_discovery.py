"""Which files are models (not those short of the tensor data their header describes), and
reading their GGUF headers (where their tensor data ends, checked against the `gguf` package's
own reader for every tensor type)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from inference.runtime import catalog, gguf_header
from inference.runtime.catalog import Catalog, ModelsDirectoryMissing, scan, strip_suffix
from inference.runtime.gguf_header import GGUFError, GGUFIncomplete, read_gguf_info
from tests.fake_engine import pool_config
from tests.gguf_files import write_random, write_synthetic, write_tensors, write_truncated, write_without_tensor_data


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"GGUF")


def test_every_gguf_file_is_a_model_named_by_its_stem(tmp_path: Path) -> None:
    touch(tmp_path, "b-model.gguf", "A-Model.gguf", "notes.txt", "weights.bin", ".hidden.gguf")
    (tmp_path / "shared").mkdir()  # several models: not a model's own folder, not looked into
    touch(tmp_path / "shared", "deep.gguf", "deeper.gguf")
    (tmp_path / "own" / "deeper").mkdir(parents=True)  # one level down, no deeper
    touch(tmp_path / "own" / "deeper", "deepest.gguf")
    models = scan(tmp_path).models
    assert list(models) == ["A-Model", "b-model"]
    assert models["A-Model"].path == tmp_path / "A-Model.gguf"
    assert models["A-Model"].size_bytes == 4


def test_split_models_are_listed_once_and_projectors_not_at_all(tmp_path: Path) -> None:
    touch(tmp_path, "big-00001-of-00002.gguf", "big-00002-of-00002.gguf", "mmproj-vision.gguf")
    models = scan(tmp_path).models
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
    assert list(scan(inside).models) == ["alias", "real"]


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
    assert info.data_end == smollm2_file.stat().st_size  # its last tensor ends where the file does


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


@pytest.mark.parametrize(
    "make",
    [
        lambda path: write_without_tensor_data(path),
        lambda path: write_truncated(write_synthetic(path.with_suffix(".whole")), path, 256 - 10),
    ],
    ids=["header-only", "ten-bytes-short"],
)
def test_a_file_short_of_its_tensor_data_is_not_listed_and_the_log_says_how_short(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make
) -> None:
    write_synthetic(tmp_path / "whole.gguf")
    short = make(tmp_path / "short.gguf")
    found = scan(tmp_path)
    assert list(found.models) == ["whole"]
    expected = read_gguf_info(tmp_path / "whole.gguf").data_end  # the same header, all its data there
    assert list(found.incomplete) == [short]
    [line] = [record.getMessage() for record in caplog.records if record.name == catalog.__name__]
    assert f"short.gguf holds {short.stat().st_size:,} of the {expected:,} bytes" in line
    assert f"({expected - short.stat().st_size:,} missing" in line
    with pytest.raises(GGUFIncomplete, match="missing: still being copied, or cut off"):
        read_gguf_info(short)


def test_a_file_still_being_copied_is_listed_once_complete(tmp_path: Path) -> None:
    whole = write_synthetic(tmp_path / "source.gguf").read_bytes()
    models = tmp_path / "models"
    models.mkdir()
    copy = models / "copied.gguf"
    copy.write_bytes(whole[: len(whole) // 2 + 40])  # the header, and part of the tensor data
    models_catalog = Catalog(pool_config(models))
    assert models_catalog.available() == {}

    with copy.open("ab") as stream:  # growing in place does not change the directory
        stream.write(whole[len(whole) // 2 + 40 :])

    assert list(models_catalog.available()) == ["copied"]
    assert models_catalog.reload(pool_config(models)).added == ["copied"]


def test_the_tensor_sizes_are_those_of_the_gguf_package() -> None:
    assert gguf_header._GGML_BLOCKS == {int(kind): sizes for kind, sizes in gguf.GGML_QUANT_SIZES.items()}


@pytest.mark.parametrize("kind", list(gguf.GGML_QUANT_SIZES), ids=lambda kind: kind.name)
def test_where_the_tensor_data_ends_agrees_with_the_gguf_reader(
    tmp_path: Path, kind: gguf.GGMLQuantizationType
) -> None:
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    path = write_tensors(
        tmp_path / "tensors.gguf",
        {
            "a": (np.ones((3, 5), dtype=np.float32), None),
            f"b.{kind.name}": (np.zeros((2, 3 * block_bytes), dtype=np.uint8), kind),  # 3 blocks per row
            "c": (np.ones(7, dtype=np.float16), None),
        },
    )
    tensors = gguf.GGUFReader(path).tensors
    assert read_gguf_info(path).data_end == max(tensor.data_offset + int(tensor.n_bytes) for tensor in tensors)
    assert [int(tensor.n_elements) for tensor in tensors if tensor.name.startswith("b.")] == [6 * block_elements]


def test_general_alignment_places_the_data_section(tmp_path: Path) -> None:
    tensors = {"odd": (np.ones(3, dtype=np.float32), None), "next": (np.ones(5, dtype=np.float32), None)}
    path = write_tensors(tmp_path / "aligned.gguf", tensors, alignment=256)
    reader = gguf.GGUFReader(path)
    assert reader.data_offset % 256 == 0
    assert read_gguf_info(path).data_end == max(tensor.data_offset + int(tensor.n_bytes) for tensor in reader.tensors)

    odd = tmp_path / "odd.gguf"  # general.alignment 256 made 48, which the gguf writer refuses to write
    key = b"general.alignment" + struct.pack("<II", 4, 256)
    odd.write_bytes(path.read_bytes().replace(key, key[:-4] + struct.pack("<I", 48)))
    with pytest.raises(GGUFError, match=r"general\.alignment 48 is not a power of two"):
        read_gguf_info(odd)


def test_an_unknown_tensor_type_leaves_the_size_unchecked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_synthetic(tmp_path / "future.gguf")
    monkeypatch.setattr(gguf_header, "_GGML_BLOCKS", {})
    write_truncated(path, tmp_path / "cut.gguf", path.stat().st_size - 10)
    assert read_gguf_info(tmp_path / "cut.gguf").data_end is None
    assert list(scan(tmp_path).models) == ["cut", "future"]
