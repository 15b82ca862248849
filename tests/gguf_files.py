"""Small synthetic and broken GGUF files for error-path tests."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np


def write_synthetic(path: Path, *, context_length: int = 512, chat_template: str | None = None) -> Path:
    """A well-formed GGUF header with one tiny tensor: readable, but not a loadable model."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context_length)
    if chat_template:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
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
