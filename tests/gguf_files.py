"""Small synthetic and broken GGUF files for error-path tests, and a tiny working projector."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np

from inference.runtime import gguf_header


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


def write_projector(path: Path, *, projection_dim: int = 576, seed: int = 0) -> Path:
    """A tiny multimodal projector (mmproj) with random weights that llama.cpp's multimodal
    library loads and runs: LLaVA-1.5's kind (`mlp`: a CLIP vision encoder of two blocks, then
    two linear layers), 32×32 images in 8×8 patches, so one image is 16 tokens of width
    `projection_dim` (it must be the text model's embedding size: SmolLM2's is 576). ~0.9 MB.

    What llama.cpp requires of it (its tools/mtmd/clip.cpp, tried): integers as UINT32; a
    feed-forward width unlike the embedding width (equal reads as swapped layers); every
    block present, though the last is never run; q, k, v and `mm.2` present (without them the
    process crashes, not errors); weights of std ~0.07, so that different images give different
    embeddings.
    """
    image_size, patch_size, width, feed_forward, blocks = 32, 8, 64, 128, 2
    patches = (image_size // patch_size) ** 2
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:  # numpy's shape is ggml's reversed
        return (rng.standard_normal(shape) * 0.07).astype(np.float16)

    def bias(size: int) -> np.ndarray:
        return (rng.standard_normal(size) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_string("clip.projector_type", "mlp")
    for key in ("clip.has_vision_encoder", "clip.has_llava_projector", "clip.use_gelu"):
        writer.add_bool(key, True)
    for key, value in {
        "image_size": image_size,
        "patch_size": patch_size,
        "embedding_length": width,
        "feed_forward_length": feed_forward,
        "projection_dim": projection_dim,
        "block_count": blocks,
        "attention.head_count": 2,
    }.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    tensors = {
        "v.patch_embd.weight": weight(width, 3, patch_size, patch_size),
        "v.patch_embd.bias": bias(width),
        "v.position_embd.weight": weight(patches, width),
        "v.pre_ln.weight": np.ones(width, dtype=np.float32),
        "v.pre_ln.bias": np.zeros(width, dtype=np.float32),
    }
    for block in range(blocks):
        for layer, (rows, columns) in {
            "attn_q": (width, width),
            "attn_k": (width, width),
            "attn_v": (width, width),
            "attn_out": (width, width),
            "ffn_up": (feed_forward, width),
            "ffn_down": (width, feed_forward),
        }.items():
            tensors[f"v.blk.{block}.{layer}.weight"] = weight(rows, columns)
            tensors[f"v.blk.{block}.{layer}.bias"] = bias(rows)
        for norm in ("ln1", "ln2"):
            tensors[f"v.blk.{block}.{norm}.weight"] = np.ones(width, dtype=np.float32)
            tensors[f"v.blk.{block}.{norm}.bias"] = np.zeros(width, dtype=np.float32)
    tensors |= {
        "mm.0.weight": weight(projection_dim, width),
        "mm.0.bias": bias(projection_dim),
        "mm.2.weight": weight(projection_dim, projection_dim),
        "mm.2.bias": bias(projection_dim),
    }
    return _written(writer, tensors, path)


def write_with_metadata(source: Path, path: Path, added: dict[str, int]) -> Path:
    """A copy of a GGUF model with UINT32 metadata keys added: its header spliced (the new keys after
    the old ones, the tensor infos as they were, the data section realigned) and its tensor data
    copied as bytes. The same file as a GGUFReader/GGUFWriter round trip makes, in a tenth of a
    second rather than four (the reader materialises every vocabulary string)."""
    with source.open("rb") as original:
        metadata, tensor_count = gguf_header._read_metadata(original)
        keys_end = original.tell()
        gguf_header._read_tensor_infos(original, tensor_count)
        infos_end = original.tell()
        alignment = metadata.get("general.alignment", 32)
        assert isinstance(alignment, int)
        original.seek(0)
        head = bytearray(original.read(infos_end))
        struct.pack_into("<Q", head, 16, struct.unpack_from("<Q", head, 16)[0] + len(added))  # the key count
        new_keys = b"".join(
            struct.pack("<Q", len(key)) + key.encode() + struct.pack("<II", gguf.GGUFValueType.UINT32, value)
            for key, value in added.items()
        )
        header = head[:keys_end] + new_keys + head[keys_end:]
        with path.open("wb") as copy:
            copy.write(header + bytes(-len(header) % alignment))
            original.seek(-(-infos_end // alignment) * alignment)
            shutil.copyfileobj(original, copy, 16 * 1024 * 1024)
    return path


# SmolLM2's control tokens that a copy marks as fill-in-the-middle tokens (write_fim_copy).
FIM_TOKENS = {
    "pre": 8,  # <issue_start>
    "suf": 9,  # <issue_comment>
    "mid": 10,  # <issue_closed>
    "pad": 16,  # <empty_output>
    "rep": 3,  # <repo_name>
    "sep": 5,  # <file_sep>
}


def write_fim_copy(smollm2: Path, path: Path) -> Path:
    """SmolLM2 as a code model: its GGUF metadata names six of its own control tokens as the FIM
    tokens (FIM_TOKENS), so that llama.cpp lays out and ends fill-in-the-middle with them."""
    return write_with_metadata(
        smollm2, path, {f"tokenizer.ggml.fim_{name}_token_id": id_ for name, id_ in FIM_TOKENS.items()}
    )


# SmolLM2's tokenizer keys that a model borrowing its vocabulary copies (write_reranker).
_VOCABULARY_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
)


def write_reranker(
    path: Path, vocabulary_of: Path, *, template: str | None = None, around_pairs: bool = False, seed: int = 0
) -> Path:
    """A tiny reranker with random weights that llama.cpp loads and runs with rank pooling, as
    it runs a Qwen3 reranker: a two-block `qwen3` model (width 64) whose GGUF asks for rank
    pooling, with a classifier head `cls.output` of two labels ("yes", "no"; the score is the
    softmax's first); the vocabulary of the model at `vocabulary_of` (SmolLM2's: ~7 MB in all).
    `template`: its `tokenizer.chat_template.rerank`; `around_pairs`: the vocabulary asks for
    BOS, EOS and SEP (SEP the EOS token), as a BERT reranker's does."""
    reader = gguf.GGUFReader(str(vocabulary_of))
    width, heads, kv_heads, feed_forward, blocks = 64, 4, 2, 128, 2
    head = width // heads
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:  # numpy's shape is ggml's reversed
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "qwen3")
    for key in _VOCABULARY_KEYS:
        field = reader.fields[key]
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        elif field.types[0] == gguf.GGUFValueType.STRING:
            writer.add_string(key, field.contents())
        else:
            writer.add_uint32(key, field.contents())
    vocabulary_size = len(reader.fields["tokenizer.ggml.tokens"].data)
    if around_pairs:
        writer.add_uint32("tokenizer.ggml.seperator_token_id", reader.fields["tokenizer.ggml.eos_token_id"].contents())
    for key in ("add_bos_token", "add_eos_token", "add_sep_token"):
        writer.add_bool(f"tokenizer.ggml.{key}", around_pairs)
    if template is not None:
        writer.add_string("tokenizer.chat_template.rerank", template)
    for key, value in {
        "context_length": 2048,
        "embedding_length": width,
        "feed_forward_length": feed_forward,
        "block_count": blocks,
        "attention.head_count": heads,
        "attention.head_count_kv": kv_heads,
        "attention.key_length": head,
        "attention.value_length": head,
        "pooling_type": 4,  # rank
    }.items():
        writer.add_uint32(f"qwen3.{key}", value)
    writer.add_float32("qwen3.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32("qwen3.rope.freq_base", 10000.0)
    writer.add_array("qwen3.classifier.output_labels", ["yes", "no"])
    tensors = {
        "token_embd.weight": weight(vocabulary_size, width).astype(np.float16),
        "output_norm.weight": np.ones(width, dtype=np.float32),
        "cls.output.weight": weight(2, width),
    }
    for block in range(blocks):
        tensors |= {
            f"blk.{block}.attn_norm.weight": np.ones(width, dtype=np.float32),
            f"blk.{block}.attn_q.weight": weight(heads * head, width),
            f"blk.{block}.attn_k.weight": weight(kv_heads * head, width),
            f"blk.{block}.attn_v.weight": weight(kv_heads * head, width),
            f"blk.{block}.attn_output.weight": weight(width, heads * head),
            f"blk.{block}.attn_q_norm.weight": np.ones(head, dtype=np.float32),
            f"blk.{block}.attn_k_norm.weight": np.ones(head, dtype=np.float32),
            f"blk.{block}.ffn_norm.weight": np.ones(width, dtype=np.float32),
            f"blk.{block}.ffn_gate.weight": weight(feed_forward, width),
            f"blk.{block}.ffn_up.weight": weight(feed_forward, width),
            f"blk.{block}.ffn_down.weight": weight(width, feed_forward),
        }
    return _written(writer, tensors, path)


def _written(writer: gguf.GGUFWriter, tensors: dict[str, np.ndarray], path: Path) -> Path:
    """The writer's file, with these tensors, written and closed."""
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
