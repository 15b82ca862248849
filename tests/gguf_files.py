"""Small synthetic and broken GGUF files for error-path tests."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np


def write_synthetic(path: Path, *, context_length: int = 512, chat_template: str | None = None) -> Path:
    """A well-formed GGUF header with one tiny tensor: readable, but not a loadable model."""
    writer = _synthetic_writer(path, context_length, chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_without_tensor_data(path: Path) -> Path:
    """write_synthetic()'s header, describing its tensor, and none of the tensor's bytes."""
    writer = _synthetic_writer(path, 512, None)
    writer.add_tensor_info("token_embd.weight", (4, 4), np.dtype(np.float32), 64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def _synthetic_writer(path: Path, context_length: int, chat_template: str | None) -> gguf.GGUFWriter:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context_length)
    if chat_template:
        writer.add_chat_template(chat_template)
    return writer


def write_tensors(
    path: Path, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType | None]], alignment: int | None = None
) -> Path:
    """A GGUF file of these tensors (raw bytes of the given ggml type, or a plain array), its
    data section aligned to `alignment` (general.alignment) if given."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for name, (data, raw_type) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_truncated(source: Path, path: Path, keep_bytes: int) -> Path:
    with source.open("rb") as original:
        path.write_bytes(original.read(keep_bytes))
    return path


def write_random(path: Path, size: int = 4096) -> Path:
    path.write_bytes(os.urandom(size))
    return path
