"""Images in the runtime, with the real model and the tiny random-weight projector: a prompt grows by
each image's positions, images are encoded and decoded as steps of their own between the other
requests' token steps, a slot or the prompt cache holding the same picture skips encoding it,
cancelling between encode and decode frees it, and a projector that does not fit is refused at load."""

from __future__ import annotations

import os
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.runtime.drafting import NgramDrafter
from inference.runtime.engine import GenerationEngine
from inference.runtime.errors import ImageRejected
from inference.runtime.jobs import IMAGE_MARKER, ChatJob, ChatMessage, Finished, Sampling
from inference.runtime.llama import LlamaLoadError
from inference.runtime.prompt_store import identity
from inference.runtime.settings import LoadSettings
from tests.chat_prompts import smollm2_prompt
from tests.gguf_files import write_projector
from tests.test_batching import run_all

pytestmark = pytest.mark.slow

IMAGE_TOKENS = 16  # the fixture's 32×32 images in 8×8 patches
GREEDY = Sampling(temperature=0)


def png(seed: int, size: int = 32) -> bytes:
    """A PNG of random pixels (different seeds: different pictures)."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(size * 3)) for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def seeing(text: str, *images: bytes, max_tokens: int = 8, ignore_eos: bool = True) -> ChatJob:
    """A chat job whose user message has `text`, each IMAGE_MARKER in it one of `images`."""
    messages = (ChatMessage("user", text),)
    return ChatJob(
        messages=messages,
        prompt_text=smollm2_prompt(messages),
        images=images,
        max_tokens=max_tokens,
        sampling=GREEDY,
        ignore_eos=ignore_eos,
    )


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_projector(tmp_path_factory.mktemp("vision") / "mmproj.gguf")


@pytest.fixture
def make_engine(smollm2_file: Path, projector: Path) -> Iterator[Any]:
    engines: list[GenerationEngine] = []

    def make(projector_file: Path | None = projector, **fields: Any) -> GenerationEngine:
        settings = LoadSettings(
            **{"n_ctx": 2048, "n_gpu_layers": 0, "n_threads": 1, "n_threads_batch": 2, "parallel": 2} | fields,
            projector=str(projector_file or ""),
        )
        engine = GenerationEngine("smollm2", smollm2_file, settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


class Counted:
    """The engine's context with its image encodes and frees counted."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.encoded = self.closed = 0
        context = engine._context
        encode = context.encode_image

        def counted(image: Any) -> Any:
            self.encoded += 1
            encoded = encode(image)
            close = encoded.close

            def closing() -> None:
                self.closed += 1
                close()

            encoded.close = closing  # type: ignore[method-assign]
            return encoded

        context.encode_image = counted  # type: ignore[method-assign]


def test_the_prompt_grows_by_each_images_positions_and_generation_runs(make_engine) -> None:
    engine = make_engine()
    text_only = engine.prepare(seeing("Look: \nWhat is it?"))
    one = engine.prepare(seeing(f"Look: {IMAGE_MARKER}\nWhat is it?", png(1)))
    two = engine.prepare(seeing(f"Look: {IMAGE_MARKER}{IMAGE_MARKER}\nWhat is it?", png(1), png(2)))
    assert len(one.prompt) == len(text_only.prompt) + IMAGE_TOKENS
    assert len(two.prompt) == len(text_only.prompt) + 2 * IMAGE_TOKENS
    first, second = two.images
    assert (first.length, second.start) == (IMAGE_TOKENS, first.end)
    assert all(token < 0 for token in two.prompt[first.start : second.end])  # placeholders, no tokens
    assert all(token >= 0 for token in two.prompt[: first.start] + two.prompt[second.end :])
    text, finished, accepted = run_all(
        engine, {"a": seeing(f"Look: {IMAGE_MARKER}{IMAGE_MARKER}\nWhat is it?", png(1), png(2))}
    )["a"]
    assert finished.completion_tokens == 8 and text
    assert accepted.prompt_tokens == finished.prompt_tokens == len(two.prompt)


def test_different_pictures_give_different_answers_and_the_same_picture_the_same(make_engine) -> None:
    engine = make_engine()
    jobs = {str(seed): seeing(f"{IMAGE_MARKER}\nDescribe it.", png(seed), max_tokens=12) for seed in (1, 2)}
    first = run_all(engine, jobs)
    again = run_all(engine, {"1": seeing(f"{IMAGE_MARKER}\nDescribe it.", png(1), max_tokens=12)})
    assert first["1"][0] == again["1"][0]
    assert first["1"][0] != first["2"][0]


def test_image_steps_come_between_the_token_steps_of_a_generating_request(make_engine) -> None:
    """A request already generating gets a token at least every other step while another request's
    two images are encoded and decoded (four image steps), and both complete."""
    engine = make_engine()
    counted = Counted(engine)
    assert engine.start("text", engine.prepare(seeing("Count to fifty.", max_tokens=40)), lambda: False)
    engine.step()  # its prompt
    picture = seeing(f"{IMAGE_MARKER} and {IMAGE_MARKER}\nCompare them.", png(3), png(4), max_tokens=4)
    assert engine.start("image", engine.prepare(picture), lambda: False)
    without_token, done = 0, set()
    while engine.running:
        events = engine.step()
        done |= {key for key, event in events if isinstance(event, Finished)}
        if "text" not in done:
            without_token = 0 if any(key == "text" for key, _ in events) else without_token + 1
            assert without_token <= 1, "the text request waited more than one image step"
    assert done == {"text", "image"} and counted.encoded == counted.closed == 2


def test_a_follow_up_about_the_same_picture_reuses_it_without_encoding_it_again(make_engine) -> None:
    engine = make_engine(prompt_cache_mb=64)
    counted = Counted(engine)
    question = f"{IMAGE_MARKER}\nWhat is this?"
    answer, _, first = run_all(engine, {"a": seeing(question, png(5))})["a"]
    assert (first.cached_tokens, counted.encoded) == (0, 1)
    messages = (ChatMessage("user", question), ChatMessage("assistant", answer), ChatMessage("user", "And the colour?"))
    follow_up = ChatJob(
        messages=messages, prompt_text=smollm2_prompt(messages), images=(png(5),), max_tokens=4, sampling=GREEDY
    )
    _, _, second = run_all(engine, {"b": follow_up})["b"]
    assert second.cached_tokens >= first.prompt_tokens and second.cache_tier == "slot"
    assert counted.encoded == 1
    other = run_all(engine, {"c": seeing(question, png(6))})["c"][2]  # another picture: reused up to it
    image = engine.prepare(seeing(question, png(6))).images[0]
    assert other.cached_tokens == image.start and counted.encoded == 2


def test_cancelling_between_encode_and_decode_frees_the_encoded_image(make_engine) -> None:
    engine = make_engine()
    counted = Counted(engine)
    cancelled = False
    # SmolLM2's template begins with text: a step of it, then the image's encode step.
    assert engine.start("a", engine.prepare(seeing(f"{IMAGE_MARKER} hello", png(8))), lambda: cancelled)
    engine.step()
    engine.step()
    assert (counted.encoded, counted.closed) == (1, 0)
    cancelled = True
    events = engine.step()
    assert [event.finish_reason for _, event in events if isinstance(event, Finished)] == ["cancelled"]
    assert counted.closed == 1 and engine.running == 0
    assert run_all(engine, {"b": seeing(f"{IMAGE_MARKER} hello", png(8), max_tokens=2)})["b"][1].completion_tokens == 2


def test_an_image_llama_cpp_cannot_decode_is_refused_by_its_index(make_engine) -> None:
    engine = make_engine()
    good = png(1)
    broken = good[:33] + zlib.compress(b"not pixels") + good[-12:]  # a PNG header, then garbage
    with pytest.raises(ImageRejected) as refused:
        engine.prepare(seeing(f"{IMAGE_MARKER}{IMAGE_MARKER}?", good, broken))
    assert refused.value.index == 1 and "could not decode" in refused.value.detail
    assert run_all(engine, {"a": seeing(f"{IMAGE_MARKER}?", good, max_tokens=2)})["a"][1].completion_tokens == 2


def test_a_model_without_a_projector_refuses_images(make_engine) -> None:
    with pytest.raises(ImageRejected, match="text only"):
        make_engine(projector_file=None).prepare(seeing(f"{IMAGE_MARKER}?", png(1)))


def test_a_projector_of_another_width_is_refused_at_load_naming_both_files(make_engine, tmp_path: Path) -> None:
    narrow = write_projector(tmp_path / "mmproj-narrow.gguf", projection_dim=64)
    with pytest.raises(LlamaLoadError, match="mmproj-narrow.gguf does not fit model .*SmolLM2"):
        make_engine(projector_file=narrow)


def test_a_corrupt_projector_is_refused_at_load(make_engine, tmp_path: Path) -> None:
    corrupt = tmp_path / "mmproj-corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(LlamaLoadError, match="mmproj-corrupt.gguf"):
        make_engine(projector_file=corrupt)


def test_drafts_never_propose_an_images_positions() -> None:
    drafter = NgramDrafter()
    image, copied = [-5] * 4, list(range(1, 9))
    tokens = [*copied, *image, 9, *copied[:-1]]
    assert drafter.propose(tokens, 8, most=8) == []  # the continuation of "1 … 8" is an image
    assert drafter.propose([*copied, 9, *image, *copied[:-1]], 8, most=8) == [9]


def test_the_disk_prompt_cache_is_kept_apart_per_projector_file(smollm2_file: Path, tmp_path: Path) -> None:
    """Cached image positions are the projector's embeddings: another projector file, or the same
    file changed, must not find them."""
    first = write_projector(tmp_path / "one.gguf")
    text_only = identity(smollm2_file, {})
    with_first = identity(smollm2_file, {"projector": str(first)})
    assert (
        len({text_only, with_first, identity(smollm2_file, {"projector": str(write_projector(tmp_path / "two.gguf"))})})
        == 3
    )
    write_projector(first, seed=1)
    os.utime(first, ns=(1, 1))
    assert identity(smollm2_file, {"projector": str(first)}) != with_first
