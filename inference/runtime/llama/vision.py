"""A model's multimodal projector through llama.cpp's multimodal library (mtmd): images into
prompt positions, encoded into embeddings, and decoded into a sequence of the model's context.

A prompt with images is tokenized by mtmd (its text, and each image's positions at its marker);
each image's positions are held by a placeholder standing for its content (`placeholder`), so the
scheduler, the slots and the prompt cache compare images as they compare tokens. An image is
encoded (the vision encoder: the slow part) in one scheduler step and decoded into its sequence
in a later one; its embeddings are copied out in between, since mtmd's own output buffer is
overwritten by the next encode.

Like the rest of this package, only the model's worker thread may use these.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from llama_cpp import mtmd_cpp as mtmd

from inference.runtime.errors import ImageRejected
from inference.runtime.jobs import IMAGE_MARKER, PromptImage
from inference.runtime.llama import (
    DecodeFailed,
    LlamaLoadError,
    LlamaModel,
    _llama_log_callback,
    _recent_llama_problems,
)
from inference.runtime.settings import LoadSettings

# mtmd and its helpers log through their own hooks: into Python logging with llama.cpp's lines.
mtmd.mtmd_log_set(_llama_log_callback, ctypes.c_void_p(0))
mtmd.mtmd_helper_log_set(_llama_log_callback, ctypes.c_void_p(0))


def placeholder(data: bytes) -> int:
    """What stands in a prompt for each position of this image: a negative number (no token is
    one) from its content, equal for equal files."""
    return -1 - int.from_bytes(hashlib.sha256(data).digest()[:4], "little") % (2**31 - 1)


class Projector:
    """A projector loaded for a model: prompts with images, and their encoding."""

    def __init__(self, model: LlamaModel, path: Path, model_path: Path, settings: LoadSettings) -> None:
        self._model = model
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = settings.n_gpu_layers != 0
        params.n_threads = settings.n_threads_batch
        params.print_timings = False
        params.media_marker = IMAGE_MARKER.encode()
        self._ctx = mtmd.mtmd_init_from_file(str(path).encode(), model.pointer, params)
        if not self._ctx:
            problems = _recent_llama_problems() or "llama.cpp could not load it"
            raise LlamaLoadError(f"projector {path.name} does not fit model {model_path.name}: {problems}")
        if not mtmd.mtmd_support_vision(self._ctx):
            self.close()
            raise LlamaLoadError(f"projector {path.name} of {model_path.name} has no vision encoder")
        # Positions as llama.cpp's M-RoPE models (Qwen2-VL and later) count them are not one per
        # token: our slots count one position per token, so these projectors' images are refused.
        self._mrope = mtmd.mtmd_decode_use_mrope(self._ctx)
        self._batch_capacity = settings.batch_capacity

    def prompt(self, text: str, images: tuple[bytes, ...]) -> tuple[list[int], tuple[PromptImage, ...]]:
        """The prompt's tokens, each image's positions held by its placeholder, and where each
        image is; raises ImageRejected for an image mtmd cannot read (by its index)."""
        chunks = self._chunks(text, images)
        try:
            tokens: list[int] = []
            placed: list[PromptImage] = []
            for index in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, index)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    count = ctypes.c_size_t()
                    pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    tokens += pointer[: count.value] if count.value else []
                    continue
                data = images[len(placed)]
                length = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                self._check(chunk, len(placed), length)
                placed.append(PromptImage(len(tokens), length, data))
                tokens += [placeholder(data)] * length
            return self._model.single_bos(tokens), tuple(placed)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)

    def _check(self, chunk: Any, index: int, length: int) -> None:
        """Refuse an image this context cannot decode."""
        if self._mrope:
            detail = "its projector places images by M-RoPE positions (as Qwen2-VL's), which are not served yet"
            raise ImageRejected(model=self._model.name, index=index, detail=detail)
        # Attending to itself both ways, an image must be decoded in one batch.
        if length > self._batch_capacity and mtmd.mtmd_decode_use_non_causal(self._ctx, chunk):
            detail = f"it takes {length} positions, more than one batch holds (n_batch {self._batch_capacity})"
            raise ImageRejected(model=self._model.name, index=index, detail=detail)

    def encode(self, data: bytes, ctx: Any, n_batch: int) -> EncodedImage:
        """The image through the vision encoder: its chunk and embeddings, to decode later into
        a sequence of `ctx` (in batches of `n_batch`)."""
        chunks = self._chunks(IMAGE_MARKER, (data,))
        try:
            every = (mtmd.mtmd_input_chunks_get(chunks, index) for index in range(mtmd.mtmd_input_chunks_size(chunks)))
            image = next(
                chunk for chunk in every if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE
            )
            chunk = mtmd.mtmd_input_chunk_copy(image)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
        encoded = EncodedImage(self._ctx, chunk, ctx, n_batch)
        if mtmd.mtmd_encode_chunk(self._ctx, chunk) != 0:  # read at prepare: llama.cpp itself failed
            encoded.close()
            raise DecodeFailed(f"encoding an image failed; {_recent_llama_problems()}".rstrip("; "))
        n_values = mtmd.mtmd_input_chunk_get_n_tokens(chunk) * self._model.n_embd_input
        encoded.embeddings = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self._ctx), shape=(n_values,)).copy()
        return encoded

    def _chunks(self, text: str, images: tuple[bytes, ...]) -> Any:
        """mtmd's chunks of a prompt (free them); raises ImageRejected for an unreadable image."""
        bitmaps = []
        try:
            for index, data in enumerate(images):
                buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self._ctx, buffer, len(data), False)
                if not bitmap:
                    raise ImageRejected(model=self._model.name, index=index, detail="llama.cpp could not decode it")
                bitmaps.append(bitmap)
            chunks = mtmd.mtmd_input_chunks_init()
            encoded = text.encode()
            prompt = mtmd.mtmd_input_text(encoded, len(encoded), True, True)
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            result = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(prompt), array, len(bitmaps))
            if result != 0:
                mtmd.mtmd_input_chunks_free(chunks)
                detail = "the prompt's image markers do not match its images" if result == 1 else "mtmd failed"
                raise ImageRejected(
                    model=self._model.name, index=0, detail=f"{detail}; {_recent_llama_problems()}".rstrip("; ")
                )
            return chunks
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None


def load_projector(model: LlamaModel, settings: LoadSettings, model_path: Path) -> Projector | None:
    """The model's projector (`settings.projector`), if it has one."""
    return Projector(model, Path(settings.projector), model_path, settings) if settings.projector else None


class EncodedImage:
    """An image through the vision encoder, waiting to be decoded into a sequence: its chunk
    and a copy of its embeddings (the scheduler's EncodedImage)."""

    def __init__(self, projector_ctx: Any, chunk: Any, ctx: Any, n_batch: int) -> None:
        self._projector_ctx, self._chunk, self._ctx, self._n_batch = projector_ctx, chunk, ctx, n_batch
        self.embeddings: np.ndarray[Any, Any] = np.zeros(0, dtype=np.float32)

    def decode(self, seq_id: int, position: int) -> None:
        """Decode it into the sequence from `position`; mtmd's helper sets the attention the
        projector wants (non-causal for some) and splits it into batches."""
        new_position = ctypes.c_int32()
        result = mtmd.mtmd_helper_decode_image_chunk(
            self._projector_ctx,
            self._ctx,
            self._chunk,
            self.embeddings.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            position,
            seq_id,
            self._n_batch,
            ctypes.byref(new_position),
            mtmd.mtmd_helper_post_decode_callback(),
            ctypes.c_void_p(0),
        )
        if result != 0:
            raise DecodeFailed(f"decoding an image failed ({result}); {_recent_llama_problems()}".rstrip("; "))

    def close(self) -> None:
        if self._chunk:
            mtmd.mtmd_input_chunk_free(self._chunk)
            self._chunk = None
