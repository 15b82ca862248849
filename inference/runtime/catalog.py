"""Which files are models, the names and aliases they answer to, and their GGUF headers.

A model is a `*.gguf` file directly in the models directory, named by its file name without
`.gguf`. A split model (`name-00001-of-00003.gguf`, …) is listed once, as `name`, by its first
part; `mmproj*` files (vision projectors) are not models. Files that resolve outside the
directory (symlinks pointing out) are never offered, nor are files shorter than the tensor data
their GGUF header describes (a copy still under way, or a file cut off): such a file is listed
once it is complete. Headers are read by a small parser of our own, once per file version: the
`gguf` package's reader materialises every vocabulary string (4.1 s for SmolLM2's header,
against 0.08 s here), and a first load waits for this read.

A Catalog is shared by every thread (requests, the reaper, reloads); it holds no lock of its
own beyond the one that keeps "the directory is missing" logged once.
"""

from __future__ import annotations

import functools
import glob
import logging
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from inference.config import ModelManagerConfig
from inference.runtime.errors import ModelNotFound, NoModelGiven

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
_SPLIT_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})$")


class ModelsDirectoryMissing(Exception):
    """The configured models directory does not exist or is not a directory."""


class GGUFError(Exception):
    """A file is not a readable GGUF model; the message says why."""


class GGUFIncomplete(GGUFError):
    """The file ends before the tensor data its GGUF header describes."""

    def __init__(self, name: str, size: int, expected: int) -> None:
        super().__init__(
            f"{name} holds {size:,} of the {expected:,} bytes its GGUF header describes "
            f"({expected - size:,} missing: still being copied, or cut off)"
        )
        self.size, self.expected = size, expected


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
    bos_token: str = ""  # the BOS token's text ("": none), and the EOS's: chat templates write them
    eos_token: str = ""
    data_end: int | None = None  # the bytes the file must hold; None: a tensor type we do not know


class _Array(NamedTuple):
    """A metadata array: its length, and its items if they are strings (the vocabulary's texts)."""

    length: int
    items: tuple[str, ...] = ()


# llama_ftype values (general.file_type) and their usual names.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}

# ggml tensor types (gguf.constants.GGML_QUANT_SIZES): (elements per block, bytes per block).
# Mirrored rather than imported: the `gguf` package is a test dependency, not a runtime one
# (tests/test_discovery.py checks that the two agree).
_GGML_BLOCKS = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 40),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
    40: (64, 36),
    41: (128, 18),
}
_DEFAULT_ALIGNMENT = 32  # of the tensor data section, unless general.alignment says otherwise


class Scan(NamedTuple):
    """What one look at the models directory found."""

    models: dict[str, ModelFile]  # by name, sorted by name
    incomplete: dict[Path, tuple[int, int]]  # not listed until complete: (inode, bytes its header describes)


def scan(directory: Path) -> Scan:
    """Every model in `directory`, and the files that will be models once they are complete."""
    if not directory.is_dir():
        raise ModelsDirectoryMissing(f"models directory {directory} does not exist")
    root = directory.resolve()
    found: dict[str, ModelFile] = {}
    incomplete: dict[Path, tuple[int, int]] = {}
    for path in directory.iterdir():
        name = listed_name(path)
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
        try:
            read_gguf_info(path)
        except GGUFIncomplete as exc:
            logger.warning("not listing %s: %s", name, exc)
            incomplete[path] = (stat.st_ino, exc.expected)
            continue
        except GGUFError:
            pass  # listed all the same: loading it fails with a 503 that says what is wrong
        size = stat.st_size + _other_split_parts_size(path, name)
        found[name] = ModelFile(name=name, path=path, size_bytes=size, modified=stat.st_mtime)
    return Scan(dict(sorted(found.items())), incomplete)


def _any_completed(incomplete: dict[Path, tuple[int, int]]) -> bool:
    """Whether a file that was short at the last scan may be complete now (or was replaced):
    a file growing in place does not change the directory, which the scan is cached by."""
    for path, (inode, expected) in incomplete.items():
        try:
            stat = path.stat()
        except OSError:
            return True
        if stat.st_ino != inode or stat.st_size >= expected:
            return True
    return False


def listed_name(path: Path) -> str | None:
    """The name discovery lists this file under, or None if it is not a model (nor a first part).

    Only `*.gguf` counts: a download still under way (`NAME.gguf.part`) is never listed.
    """
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
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_STRING_BYTES = 64 * 1024 * 1024


def read_gguf_info(path: Path) -> GGUFInfo:
    """The header metadata we need from a GGUF file; raises GGUFError if it is not one, and
    GGUFIncomplete if the file is shorter than the tensor data its header describes.

    Cached per file version: a big vocabulary takes tens of milliseconds to read.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise GGUFError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    info = _read_gguf_info(path, stat.st_size, stat.st_mtime_ns)
    if info.data_end is not None and stat.st_size < info.data_end:
        raise GGUFIncomplete(path.name, stat.st_size, info.data_end)
    return info


@functools.lru_cache(maxsize=512)  # every model of a large directory: a rescan reads only what changed
def _read_gguf_info(path: Path, size: int, modified_ns: int) -> GGUFInfo:
    try:
        with path.open("rb") as stream:
            metadata, tensor_count = _read_metadata(stream)
            parameter_count, data_bytes = _read_tensor_infos(stream, tensor_count)
            header_end = stream.tell()
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
    vocabulary = tokens.items if isinstance(tokens, _Array) else ()

    def token_text(key: str) -> str:  # a special token's text
        token = metadata.get(key)
        return vocabulary[token] if isinstance(token, int) and 0 <= token < len(vocabulary) else ""

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
        bos_token=token_text("tokenizer.ggml.bos_token_id"),
        eos_token=token_text("tokenizer.ggml.eos_token_id"),
        data_end=_data_end(header_end, tensor_count, data_bytes, metadata.get("general.alignment", _DEFAULT_ALIGNMENT)),
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


def _read_tensor_infos(stream: BinaryIO, tensor_count: int) -> tuple[int, int | None]:
    """From the tensor infos after the metadata: the sum of the tensors' element counts, and
    where the last tensor's bytes end, from the start of the data section (None if a tensor's
    type is one we do not know the size of)."""
    parameters = 0
    data_bytes: int | None = 0
    for _ in range(tensor_count):
        _read_string(stream)  # name
        elements = 1
        for _ in range(_unpack(stream, "<I")):
            elements *= _unpack(stream, "<Q")
        tensor_type, offset = _unpack(stream, "<I"), _unpack(stream, "<Q")
        parameters += elements
        if data_bytes is not None and tensor_type in _GGML_BLOCKS:
            block_elements, block_bytes = _GGML_BLOCKS[tensor_type]
            data_bytes = max(data_bytes, offset + elements // block_elements * block_bytes)
        else:
            data_bytes = None
    return parameters, data_bytes


def _data_end(header_end: int, tensor_count: int, data_bytes: int | None, alignment: object) -> int | None:
    """The file's size when all its tensor data is there: the data section starts at the end of
    the header rounded up to `general.alignment`."""
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"corrupt GGUF header (general.alignment {alignment!r} is not a power of two)")
    if data_bytes is None:
        return None
    if not tensor_count:
        return header_end  # no tensors: no data section
    return -(-header_end // alignment) * alignment + data_bytes


def _read_value(stream: BinaryIO, value_type: int) -> object:
    if value_type in _SCALAR_FORMATS:
        return _unpack(stream, _SCALAR_FORMATS[value_type])
    if value_type == _STRING:
        return _read_string(stream)
    if value_type == _ARRAY:
        item_type, count = _unpack(stream, "<I"), _unpack(stream, "<Q")
        if item_type in _SCALAR_FORMATS:  # skip without decoding: only the length is kept
            stream.seek(struct.calcsize(_SCALAR_FORMATS[item_type]) * count, 1)
            return _Array(count)
        items = [_read_value(stream, item_type) for _ in range(count)]
        return _Array(count, tuple(map(str, items)) if item_type == _STRING else ())
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


@dataclass(frozen=True)
class ModelChanges:
    """What a reload found: models added, removed, and changed (file or settings)."""

    added: list[str]
    removed: list[str]
    changed: list[str]


class Catalog:
    """The models of the configured directory, by name or alias.

    The directory is scanned again only when it changed (files added, removed, renamed), or
    when a file it found incomplete has grown to its size: a request costs one stat, not one
    per model file.
    """

    def __init__(self, config: ModelManagerConfig) -> None:
        self.config = config
        self._scanned: tuple[tuple[int, int], Scan] | None = None
        self._missing_lock = threading.Lock()
        self.directory_missing = False
        self.known = self.available()  # as of the last reload: what the next one compares with

    def available(self) -> dict[str, ModelFile]:
        """The models in the directory now (empty, with an error logged once, if it is missing)."""
        directory = self.config.models_directory
        try:
            stat = directory.stat()
            version = (stat.st_ino, stat.st_mtime_ns)
            scanned = self._scanned
            if scanned is None or scanned[0] != version or _any_completed(scanned[1].incomplete):
                scanned = self._scanned = (version, scan(directory))
            missing = False
        except (ModelsDirectoryMissing, FileNotFoundError, NotADirectoryError):
            self._scanned, scanned, missing = None, None, True
        with self._missing_lock:  # requests and the reaper notice at once: log the change once
            changed, self.directory_missing = missing != self.directory_missing, missing
        if changed and missing:
            logger.error("models directory %s does not exist; no models can be served until it does", directory)
        elif changed:
            logger.info("models directory %s is back", directory)
        return scanned[1].models if scanned else {}

    def resolve(self, requested: str | None, allowed: list[str] | None = None) -> ModelFile:
        """The model a request asks for (None: the default model), by its name or an alias;
        raises NoModelGiven or ModelNotFound.

        With `allowed` (an API key's models) the others do not exist, for that key.
        """
        available = self.available()
        if allowed:
            available = {name: model for name, model in available.items() if name in allowed}
        if requested:
            name = strip_suffix(requested)
        elif self.config.default_model:
            name = strip_suffix(self.config.default_model)
        elif len(available) == 1:
            name = next(iter(available))
        else:
            raise NoModelGiven(available=list(available))
        alias_of = None
        if name not in available and name in self.config.aliases:  # a model file of that name wins
            alias_of, name = name, strip_suffix(self.config.aliases[name])
        if name not in available:
            raise self.not_found(name, available, alias_of)
        return available[name]

    def not_found(self, name: str, available: dict[str, ModelFile], alias_of: str | None = None) -> ModelNotFound:
        """The error for a model that is not among `available` (saying if the directory is gone)."""
        return ModelNotFound(
            requested=name,
            alias_of=alias_of,
            available=list(available),
            directory=str(self.config.models_directory),
            directory_missing=self.directory_missing,
        )

    def aliases(self, models: dict[str, ModelFile]) -> dict[str, ModelFile]:
        """The configured aliases of these models (an alias that is a model's own name is not)."""
        return {
            alias: models[strip_suffix(target)]
            for alias, target in self.config.aliases.items()
            if alias not in models and strip_suffix(target) in models
        }

    def reload(self, config: ModelManagerConfig) -> ModelChanges:
        """Put new settings in force and rediscover: what changed since the last reload."""
        previous_config, previous = self.config, self.known
        self.config = config
        known = self.known = self.available()
        return ModelChanges(
            added=sorted(known.keys() - previous.keys()),
            removed=sorted(previous.keys() - known.keys()),
            changed=sorted(
                name
                for name in known.keys() & previous.keys()
                if (known[name].size_bytes, known[name].modified)
                != (previous[name].size_bytes, previous[name].modified)
                or config.settings_for(name) != previous_config.settings_for(name)
            ),
        )
