"""A GGUF file's header: the metadata the server needs, read by a small parser of our own.

The `gguf` package's reader materialises every vocabulary string (4.1 s for SmolLM2's header,
against 0.08 s here), and a first load waits for this read; it is read once per file version
(cached by path, size and modification time). Any thread may call it.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

PROJECTOR_ARCHITECTURE = "clip"  # llama.cpp's multimodal projectors (mmproj files)
RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK: a reranker's classifier head


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
    pooling_type: int = 0  # llama.cpp's LLAMA_POOLING_TYPE_* the model asks for (0: none, 4: rank, a reranker)
    rerank_template: str | None = None  # tokenizer.chat_template.rerank: "{query}", "{document}" where they go
    bos_token: str = ""  # the BOS token's text ("": none), and the EOS's: chat templates write them
    eos_token: str = ""
    data_end: int | None = None  # the bytes the file must hold; None: a tensor type we do not know
    fill_in_middle: bool = False  # FIM prefix, suffix and middle tokens, found as llama.cpp finds them

    @property
    def reranker(self) -> bool:
        """Whether the model is a reranker: its GGUF asks for rank pooling."""
        return self.pooling_type == RANK_POOLING

    @property
    def projector(self) -> bool:
        """Whether this is a multimodal projector (an mmproj file), not a model."""
        return self.architecture == PROJECTOR_ARCHITECTURE


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
    rerank_template = metadata.get("tokenizer.chat_template.rerank")
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
        pooling_type=number("pooling_type"),
        rerank_template=rerank_template if isinstance(rerank_template, str) and rerank_template else None,
        bos_token=token_text("tokenizer.ggml.bos_token_id"),
        eos_token=token_text("tokenizer.ggml.eos_token_id"),
        data_end=_data_end(header_end, tensor_count, data_bytes, metadata.get("general.alignment", _DEFAULT_ALIGNMENT)),
        fill_in_middle=_fill_in_middle(metadata, vocabulary),
    )


# llama.cpp's fill-in-the-middle tokens (src/llama-vocab.cpp): each by its metadata key (or the
# deprecated one) where that names a token of the vocabulary, else by its text in the vocabulary.
_FIM_TOKENS = (
    (
        ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
        "<|fim_prefix|> <fim-prefix> <fim_prefix> <｜fim▁begin｜> <PRE> ▁<PRE> <|code_prefix|> <|prefix|>".split(),
    ),
    (
        ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
        "<|fim_suffix|> <fim-suffix> <fim_suffix> <｜fim▁hole｜> <SUF> ▁<SUF> <|code_suffix|> <|suffix|>".split(),
    ),
    (
        ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
        "<|fim_middle|> <fim-middle> <fim_middle> <｜fim▁end｜> <MID> ▁<MID> <|code_middle|> <|middle|>".split(),
    ),
)


def _fill_in_middle(metadata: dict[str, object], vocabulary: tuple[str, ...]) -> bool:
    """Whether llama.cpp finds the vocabulary's FIM prefix, suffix and middle tokens."""
    texts: set[str] | None = None
    for keys, known_texts in _FIM_TOKENS:
        ids = (metadata.get(key) for key in keys)
        if any(isinstance(id_, int) and not isinstance(id_, bool) and 0 <= id_ < len(vocabulary) for id_ in ids):
            continue
        texts = set(vocabulary) if texts is None else texts
        if texts.isdisjoint(known_texts):
            return False
    return True


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
