"""Find the models in the models directory and read their GGUF headers.

A model is a `*.gguf` file directly in the directory, named by its file name without `.gguf`.
A split model (`name-00001-of-00003.gguf`, …) is listed once, as `name`, by its first part;
`mmproj*` files (vision projectors) are not models. Files that resolve outside the directory
(symlinks pointing out) are never offered.
"""

from __future__ import annotations

import functools
import glob
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
_SPLIT_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})$")


class ModelsDirectoryMissing(Exception):
    """The configured models directory does not exist or is not a directory."""


class GGUFError(Exception):
    """A file is not a readable GGUF model; the message says why."""


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    size_bytes: int
    modified: float


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    context_length: int | None
    chat_template: str | None
    quantization: str
    parameter_count: int
    # What the memory estimate needs (0 where the header does not say).
    block_count: int = 0
    embedding_length: int = 0
    head_count: int = 0
    head_count_kv: int = 0
    key_length: int = 0
    value_length: int = 0
    vocab_size: int = 0


class _Array(NamedTuple):
    """A metadata array, of which only the length is kept."""

    length: int


# llama_ftype values (general.file_type) and their usual names.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}


def scan(directory: Path) -> dict[str, ModelFile]:
    """Every model in `directory`, by name, sorted by name."""
    if not directory.is_dir():
        raise ModelsDirectoryMissing(f"models directory {directory} does not exist")
    root = directory.resolve()
    found: dict[str, ModelFile] = {}
    for path in directory.iterdir():
        name = _model_name(path)
        if name is None:
            continue
        try:
            resolved = path.resolve(strict=True)
            if not resolved.is_relative_to(root) or not resolved.is_file():
                logger.warning("ignoring %s: it resolves outside %s", path, root)
                continue
            stat = resolved.stat()
        except OSError:
            continue  # vanished or a dangling link: not a model
        size = stat.st_size + _other_split_parts_size(path, name)
        found[name] = ModelFile(name=name, path=path, size_bytes=size, modified=stat.st_mtime)
    return dict(sorted(found.items()))


def _model_name(path: Path) -> str | None:
    if path.suffix != GGUF_SUFFIX or path.name.startswith((".", "mmproj")):
        return None
    split = _SPLIT_PATTERN.match(path.stem)
    if split is None:
        return path.stem
    return split["stem"] if int(split["part"]) == 1 else None


def _other_split_parts_size(first_part: Path, name: str) -> int:
    if first_part.stem == name:
        return 0
    return sum(
        part.stat().st_size
        for part in first_part.parent.glob(f"{glob.escape(name)}-*-of-*{GGUF_SUFFIX}")
        if part != first_part
    )


def strip_suffix(requested: str) -> str:
    """A requested model name without its optional `.gguf` extension."""
    return requested[: -len(GGUF_SUFFIX)] if requested.endswith(GGUF_SUFFIX) else requested


# GGUF value types (gguf.constants.GGUFValueType) and their struct formats.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_STRING_BYTES = 64 * 1024 * 1024


def read_gguf_info(path: Path) -> GGUFInfo:
    """The header metadata we need from a GGUF file; raises GGUFError if it is not one.

    Cached per file version: a big vocabulary takes tens of milliseconds to read.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise GGUFError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    return _read_gguf_info(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_gguf_info(path: Path, size: int, modified_ns: int) -> GGUFInfo:
    try:
        with path.open("rb") as stream:
            metadata, tensor_count = _read_metadata(stream)
            parameter_count = _count_parameters(stream, tensor_count)
    except OSError as exc:
        raise GGUFError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise GGUFError("the GGUF header has no general.architecture")

    def number(key: str) -> int:
        value = metadata.get(f"{architecture}.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    head_count = number("attention.head_count")
    head_dimension = number("embedding_length") // head_count if head_count else 0
    chat_template = metadata.get("tokenizer.chat_template")
    file_type = metadata.get("general.file_type")
    tokens = metadata.get("tokenizer.ggml.tokens")
    return GGUFInfo(
        architecture=architecture,
        context_length=number("context_length") or None,
        chat_template=chat_template if isinstance(chat_template, str) and chat_template else None,
        quantization=_FILE_TYPES.get(file_type, f"type {file_type}") if isinstance(file_type, int) else "",
        parameter_count=parameter_count,
        block_count=number("block_count"),
        embedding_length=number("embedding_length"),
        head_count=head_count,
        head_count_kv=number("attention.head_count_kv") or head_count,
        key_length=number("attention.key_length") or head_dimension,
        value_length=number("attention.value_length") or head_dimension,
        vocab_size=number("vocab_size") or (tokens.length if isinstance(tokens, _Array) else 0),
    )


def _read_metadata(stream: BinaryIO) -> tuple[dict[str, object], int]:
    if stream.read(4) != b"GGUF":
        raise GGUFError("not a GGUF file (wrong magic bytes)")
    version = _unpack(stream, "<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    tensor_count = _unpack(stream, "<Q")
    metadata: dict[str, object] = {}
    for _ in range(_unpack(stream, "<Q")):
        key = _read_string(stream)
        metadata[key] = _read_value(stream, _unpack(stream, "<I"))
    return metadata, tensor_count


def _count_parameters(stream: BinaryIO, tensor_count: int) -> int:
    """The sum of the tensors' element counts, from the tensor infos after the metadata."""
    total = 0
    for _ in range(tensor_count):
        _read_string(stream)  # name
        elements = 1
        for _ in range(_unpack(stream, "<I")):
            elements *= _unpack(stream, "<Q")
        stream.seek(4 + 8, 1)  # type, offset
        total += elements
    return total


def _read_value(stream: BinaryIO, value_type: int) -> object:
    if value_type in _SCALAR_FORMATS:
        return _unpack(stream, _SCALAR_FORMATS[value_type])
    if value_type == _STRING:
        return _read_string(stream)
    if value_type == _ARRAY:
        item_type, count = _unpack(stream, "<I"), _unpack(stream, "<Q")
        if item_type in _SCALAR_FORMATS:  # skip without decoding: only the length is kept
            stream.seek(struct.calcsize(_SCALAR_FORMATS[item_type]) * count, 1)
        else:
            for _ in range(count):
                _read_value(stream, item_type)
        return _Array(count)
    raise GGUFError(f"corrupt GGUF header (unknown value type {value_type})")


def _read_string(stream: BinaryIO) -> str:
    length = _unpack(stream, "<Q")
    if length > _MAX_STRING_BYTES:
        raise GGUFError("corrupt GGUF header (impossible string length)")
    data = stream.read(length)
    if len(data) != length:
        raise GGUFError("truncated GGUF header")
    return data.decode("utf-8", errors="replace")


def _unpack(stream: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]
