"""Fill in the middle: llama.cpp server's POST /infill and `suffix` on /v1/completions.

The bundled SmolLM2 has no FIM tokens; a copy of it whose GGUF metadata marks six of its own
control tokens as FIM tokens (written once per session) stands in for a code model. Its prompts
are checked token by token against llama.cpp's layout, and its generation is forced (a logit bias,
a grammar) so that where it stops is deterministic.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import gguf
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from inference.models import RequestRecord
from inference.runtime.engine import GenerationEngine
from inference.runtime.errors import NoFillInMiddle, PromptTooLong
from inference.runtime.gguf_header import read_gguf_info
from inference.runtime.infill import FimTokens, infill_tokens
from inference.runtime.jobs import CompletionJob, FillInMiddle, Finished, ProjectFile, TextDelta
from inference.runtime.settings import LoadSettings
from inference.runtime.stops import StopMatcher
from inference.services import keys as key_services
from inference.serving.generate import Caller, generation_start
from tests.conftest import SMOLLM2, link_model, validate_openai
from tests.gguf_files import FIM_TOKENS, write_fim_copy, write_synthetic, write_with_metadata

FIM = "SmolLM2-FIM"
PRE, SUF, MID, PAD, REP, SEP = (FIM_TOKENS[name] for name in ("pre", "suf", "mid", "pad", "rep", "sep"))
END_OF_TEXT = 0  # <|endoftext|>: the vocabulary's end of text (EOT)


@pytest.fixture(scope="session")
def fim_file(tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path) -> Path:
    return write_fim_copy(smollm2_file, tmp_path_factory.mktemp("fim") / "fim.gguf")


@pytest.fixture
def fim(use_config, models_dir: Path, fim_file: Path) -> str:
    use_config(n_ctx=1024, parallel=2)  # a small context: its first decode is quick
    link_model(fim_file, models_dir, FIM)
    return FIM


@pytest.fixture(scope="module")
def engine(fim_file: Path) -> Any:
    settings = LoadSettings(n_ctx=512, n_gpu_layers=0, n_threads=1, n_threads_batch=2, n_batch=64)
    engine: GenerationEngine[int] = GenerationEngine(FIM, fim_file, settings)
    yield engine
    engine.close()


async def post(path: str, **body: Any) -> Any:
    return await AsyncClient().post(path, body, content_type="application/json")


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """llama.cpp's stream: `data: {json}` events only (no [DONE])."""
    events = [event for event in raw.decode().split("\n\n") if event]
    assert all(event.startswith("data: {") for event in events), events
    return [json.loads(event.removeprefix("data: ")) for event in events]


# --- the layout (pure) ------------------------------------------------------------------------


def chars(text: str, special: bool) -> list[int]:
    """A tokenizer of one token per character; with `special`, "#" is the special token 999."""
    return [999 if special and char == "#" else ord(char) for char in text]


TOKENS = FimTokens(prefix=1001, suffix=1002, middle=1003, repository=1004, file_separator=1005, bos=1000)


def test_the_layout_is_llama_cpps_bos_first() -> None:
    fill = FillInMiddle(prefix="ab#", suffix="cd", extra=(ProjectFile("x", "u.py"), ProjectFile("y")), prompt="e#")
    tokens = infill_tokens(fill, TOKENS, chars, n_ctx=1000, n_batch=100, n_predict=None)
    assert tokens == [
        1000,  # BOS, where the vocabulary adds one (llama.cpp puts the extra context before it)
        *[1004, *chars("myproject\n", False)],
        *[1005, *chars("u.py\n", False), *chars("x", False)],
        *[1005, *chars("tmp\n", False), *chars("y", False)],  # llama.cpp's name for a file without one
        *[1005, *chars("filename\n", False)],
        *[1001, *chars("ab#", False), *chars("e", False), 999],  # only `prompt` parses special tokens
        *[1002, *chars("cd", False)],
        1003,
    ]
    plain = FimTokens(prefix=1001, suffix=1002, middle=1003)  # no FIM_REP or FIM_SEP: snippets
    tokens = infill_tokens(FillInMiddle("a", "b", (ProjectFile("x"),)), plain, chars, n_ctx=99, n_batch=99, n_predict=1)
    assert tokens == [*chars("\n\n--- snippet ---\n\nx", False), 1001, ord("a"), 1002, ord("b"), 1003]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.text("ab\n", max_size=400),
    suffix=st.text("cd\n", max_size=200),
    prompt=st.text("e", max_size=40),
    extra=st.lists(st.text("x", max_size=120), max_size=4),
    n_ctx=st.integers(8, 600),
    n_batch=st.integers(8, 800),
    n_predict=st.none() | st.integers(0, 300),
    bos=st.booleans(),
)
def test_trimming_keeps_each_parts_nearest_tokens_and_fits(
    prefix: str, suffix: str, prompt: str, extra: list[str], n_ctx: int, n_batch: int, n_predict: int | None, bos: bool
) -> None:
    fim = TOKENS if bos else FimTokens(1001, 1002, 1003, 1004, 1005)
    fill = FillInMiddle(prefix, suffix, tuple(ProjectFile(text) for text in extra), prompt, trim=True)
    full = infill_tokens(FillInMiddle(prefix, suffix, fill.extra, prompt), fim, chars, n_ctx=1, n_batch=1, n_predict=0)
    tokens = infill_tokens(fill, fim, chars, n_ctx=n_ctx, n_batch=n_batch, n_predict=n_predict)
    start = 1 if bos else 0
    pre, suf = tokens.index(1001), tokens.index(1002)
    kept_extra, kept_prefix, kept_suffix = tokens[start:pre], tokens[pre + 1 : suf - len(prompt)], tokens[suf + 1 : -1]
    assert tokens[:start] == full[:start] and tokens[suf - len(prompt) : suf] == chars(prompt, True)
    # The extra context and the prefix lose their start, the suffix its end: what is kept is
    # what lies nearest the gap.
    full_extra = full[start : full.index(1001)]
    assert full_extra[len(full_extra) - len(kept_extra) :] == kept_extra
    assert prefix.endswith("".join(map(chr, kept_prefix))) and suffix.startswith("".join(map(chr, kept_suffix)))
    batch = min(n_batch, n_ctx)
    assert len(kept_prefix) <= 3 * (batch // 4)
    assert len(kept_suffix) == min(len(suffix), max(0, batch // 4 - 2 - len(prompt)))
    assert len(kept_extra) <= max(0, n_ctx - batch - 2 * (n_predict or 0))
    if len(prompt) + len(kept_suffix) + start + 3 < n_ctx:  # what cannot be trimmed leaves room
        assert len(tokens) < n_ctx, "the prompt leaves room for a token"
    if len(full) <= n_ctx - batch - 2 * (n_predict or 0) and len(prefix) <= 3 * (batch // 4) and not suffix:
        assert tokens == full, "nothing is trimmed where everything fits llama.cpp's limits"


# --- the indentation limit (llama.cpp's n_indent) --------------------------------------------


def indented_reference(text: str, indent: int) -> tuple[str, bool]:
    """Where n_indent ends the text, read from the whole of it at once."""
    first_break = text.find("\n")
    if first_break < 0:
        return text, False
    for line in re.finditer(r"(?<=\n)([ \t]*)([^ \t]?)", text[first_break:]):
        if line.group(2) and len(line.group(1)) < indent:
            return text[: first_break + line.end(1)], True
    return text, False


@settings(max_examples=300, deadline=None)
@given(text=st.text(" \tab\n", max_size=60), cuts=st.lists(st.integers(0, 60)), indent=st.integers(0, 4))
def test_the_indentation_limit_ends_the_same_text_however_it_streams(text: str, cuts: list[int], indent: int) -> None:
    matcher, sent, stopped = StopMatcher((), indent), [], False
    bounds = [0, *sorted(cut for cut in cuts if cut < len(text)), len(text)]
    for start, end in zip(bounds, bounds[1:]):
        piece, stopped = matcher.feed(text[start:end])
        sent.append(piece)
        if stopped:
            break
    else:
        sent.append(matcher.flush())
    assert ("".join(sent), stopped) == indented_reference(text, indent)
    assert matcher.underindented == stopped


def test_code_ends_at_a_line_indented_less() -> None:
    matcher = StopMatcher(("END",), indent=4)
    assert matcher.feed("x = 1\n    y = 2\n  ") == ("x = 1\n    y = 2\n", False)  # whitespace held
    assert matcher.feed("  z\nq") == ("    z\n", True) and matcher.underindented


# --- the prompt a real model gets -------------------------------------------------------------


def test_a_prompt_is_laid_out_with_the_models_fim_tokens(engine: Any) -> None:
    fill = FillInMiddle(
        prefix="def add(a, b):\n    <issue_start>",  # a special token's text in code is text
        suffix="\n    return c\n",
        extra=(ProjectFile("import math\n", "util.py"),),
        prompt="    c =",
    )
    tokens = engine.prepare(CompletionJob(prompt="", fill=fill)).prompt
    model = engine.model
    assert model.detokenize(tokens) == (
        "<repo_name>myproject\n<file_sep>util.py\nimport math\n<file_sep>filename\n"
        "<issue_start>def add(a, b):\n    <issue_start>    c =<issue_comment>\n    return c\n<issue_closed>"
    )
    assert [token for token in tokens if token in (PRE, SUF, MID)] == [PRE, SUF, MID]
    assert tokens[0] == REP and tokens[-1] == MID
    assert tokens.count(SEP) == 2


def test_infill_trims_to_fit_and_completions_do_not(engine: Any) -> None:
    long = "x = 1\n" * 200  # 1,200 characters: more than the 64-token batch can hold
    trimmed = engine.prepare(CompletionJob(prompt="", fill=FillInMiddle(long, long, trim=True))).prompt
    prefix = trimmed[trimmed.index(PRE) + 1 : trimmed.index(SUF)]
    suffix = trimmed[trimmed.index(SUF) + 1 : -1]
    assert len(prefix) == 48 and len(suffix) == 14, "3/4 of n_batch before the gap, n_batch/4 - 2 after it"
    assert engine.model.detokenize(prefix).endswith("x = 1\n") and engine.model.detokenize(suffix).startswith("x = 1")
    with pytest.raises(PromptTooLong):
        engine.prepare(CompletionJob(prompt=long, fill=FillInMiddle(long, long)))


def test_a_model_without_fim_tokens_says_which_are_missing(smollm2_file: Path) -> None:
    settings = LoadSettings(n_ctx=256, n_gpu_layers=0, n_threads=1, n_threads_batch=1)
    plain: GenerationEngine[int] = GenerationEngine(SMOLLM2, smollm2_file, settings)
    try:
        with pytest.raises(NoFillInMiddle) as raised:
            plain.prepare(CompletionJob(prompt="", fill=FillInMiddle("a", "b", param="model")))
        assert raised.value.missing == ("prefix", "suffix", "middle") and raised.value.param == "model"
    finally:
        plain.close()


# --- where generation ends --------------------------------------------------------------------


def test_the_fim_tokens_that_end_a_fill_end_generation(engine: Any) -> None:
    ends = [token for token in range(17) if engine.model.is_end_of_generation(token)]
    assert ends == [END_OF_TEXT, 2, REP, SEP, PAD], "llama.cpp adds FIM_PAD, FIM_REP and FIM_SEP to the EOG tokens"


@pytest.mark.slow
async def test_the_fill_ends_at_the_models_end_of_fill(fim: str) -> None:
    # The grammar writes the fill; then only end-of-generation tokens may follow (llama.cpp's
    # grammar), and the bias picks FIM_PAD among them. Without a stop there, the limit would end it.
    job = CompletionJob(
        prompt="",
        fill=FillInMiddle("def f():\n    return ", "\n"),
        grammar='root ::= "42"',
        logit_bias=((PAD, 100.0),),
        max_tokens=40,
    )
    generation = await generation_start(model=fim, jobs=[job], caller=Caller(), id_prefix="test-")
    events = [event async for event in generation.events]
    assert "".join(event.text for event in events if isinstance(event, TextDelta)) == "42"
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == "stop" and finished.completion_tokens < 40


# --- POST /infill -----------------------------------------------------------------------------

GAP = {"input_prefix": "def area(r):\n    return ", "input_suffix": "\n\nprint(area(2))\n", "temperature": 0}
FILL_ENDS_AT_ONCE = {"logit_bias": {str(PAD): 100}}  # the model's FIM_PAD first: the fill is empty


@pytest.mark.slow
async def test_infill_answers_in_llama_cpps_shape_and_is_recorded(fim: str) -> None:
    before = REGISTRY.get_sample_value(
        "llamasite_requests_total", {"model": fim, "endpoint": "/infill", "status": "ok", "http_status": "200"}
    )
    extra = [{"filename": "geometry.py", "text": "PI = 3.14159\n"}]
    response = await post("/infill", model=fim, input_extra=extra, prompt="3.14 *", **GAP, **FILL_ENDS_AT_ONCE)
    body = response.json()
    assert response.status_code == 200, body
    assert body["content"] == "" and body["stop"] is True and body["stop_type"] == "eos"
    assert body["model"] == fim and body["tokens_predicted"] == 0 and body["truncated"] is False
    assert body["stopping_word"] == "" and body["has_new_line"] is False
    assert body["tokens_cached"] == body["tokens_evaluated"] > 20
    timings = body["timings"]
    assert timings["prompt_n"] + timings["cache_n"] == body["tokens_evaluated"] and timings["predicted_n"] == 0
    record = await RequestRecord.objects.aget()
    assert (record.endpoint, record.model, record.status) == ("/infill", fim, RequestRecord.Status.OK)
    assert (record.prompt_tokens, record.completion_tokens, record.finish_reason) == (
        body["tokens_evaluated"],
        0,
        "stop",
    )
    after = REGISTRY.get_sample_value(
        "llamasite_requests_total", {"model": fim, "endpoint": "/infill", "status": "ok", "http_status": "200"}
    )
    assert after == (before or 0) + 1


@pytest.mark.slow
async def test_infill_streams_content_then_its_last_answer(fim: str) -> None:
    banned = {str(token): -100 for token in (PAD, SEP, REP, END_OF_TEXT, 2)}  # no end of fill: 5 tokens
    response = await post("/infill", model=fim, stream=True, n_predict=5, logit_bias=banned, **GAP)
    assert response.status_code == 200 and response["content-type"].startswith("text/event-stream")
    events = sse_events(b"".join([part async for part in response.streaming_content]))
    *texts, last = events
    assert len(texts) >= 1 and all(event["stop"] is False and event["content"] for event in texts)
    assert [event["tokens_predicted"] for event in texts] == sorted(event["tokens_predicted"] for event in texts)
    assert last["stop"] is True and last["content"] == "" and last["stop_type"] == "limit"
    assert last["tokens_predicted"] == 5 and last["truncated"] is False
    plain = (await post("/infill", model=fim, n_predict=5, logit_bias=banned, **GAP)).json()
    assert plain["tokens_predicted"] == 5 and plain["stop_type"] == "limit" and plain["content"]


@pytest.mark.slow
async def test_infill_stops_at_a_stop_word_and_at_the_end_of_fill_when_streamed(fim: str) -> None:
    for end in (SEP, END_OF_TEXT):  # FIM_SEP and the end of text end a fill too
        response = await post("/infill", model=fim, stream=True, logit_bias={str(end): 100}, **GAP)
        events = sse_events(b"".join([part async for part in response.streaming_content]))
        assert [(event["stop"], event["content"], event.get("stop_type")) for event in events] == [(True, "", "eos")]
    body = (await post("/infill", model=fim, n_predict=8, ignore_eos=True, **GAP)).json()
    word = body["content"][1:3]
    stopped = (await post("/infill", model=fim, n_predict=8, ignore_eos=True, stop=[word], **GAP)).json()
    assert stopped["stop_type"] == "word" and stopped["stopping_word"] == word and word not in stopped["content"]


@pytest.mark.slow
async def test_n_predict_zero_fills_the_cache_and_generates_nothing(fim: str) -> None:
    warm = (await post("/infill", model=fim, n_predict=0, **GAP)).json()
    assert (warm["content"], warm["tokens_predicted"], warm["stop_type"]) == ("", 0, "limit")
    again = (await post("/infill", model=fim, **GAP, **FILL_ENDS_AT_ONCE)).json()
    assert again["timings"]["cache_n"] == warm["tokens_evaluated"] - 1, "all but the last token came from the cache"


@pytest.mark.slow
async def test_response_fields_pick_the_answer(fim: str) -> None:
    fields = ["content", "timings/prompt_n", "tokens_cached", "no/such"]
    body = (await post("/infill", model=fim, response_fields=fields, **GAP, **FILL_ENDS_AT_ONCE)).json()
    assert set(body) == {"content", "timings/prompt_n", "tokens_cached"} and isinstance(body["timings/prompt_n"], int)


@pytest.mark.slow
async def test_what_editors_send_is_accepted(fim: str) -> None:
    """llama.vscode's and llama.vim's requests (their fields as they send them)."""
    body = {
        "model": fim,
        "id_slot": 0,
        "input_extra": [{"text": "x = 1\n", "filename": "a.py"}, {"text": "y = 2\n"}],
        "prompt": "    ",
        "n_predict": 16,
        "stop": [],
        "n_indent": 4,
        "top_k": 40,
        "top_p": 0.99,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "seed": -1,
        **GAP,
        **FILL_ENDS_AT_ONCE,
    }
    response = await post("/infill", **body)
    assert response.status_code == 200, response.content


# --- suffix on /v1/completions ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
async def test_completions_fill_the_middle_with_suffix(fim: str, stream: bool) -> None:
    body = {"model": fim, "prompt": "def area(r):\n    return ", "suffix": "\n", "stream": stream, **FILL_ENDS_AT_ONCE}
    response = await post("/v1/completions", **body)
    assert response.status_code == 200, response.content
    if stream:
        raw = b"".join([part async for part in response.streaming_content]).decode()
        assert raw.endswith("data: [DONE]\n\n")
        chunks = [json.loads(event[6:]) for event in raw.split("\n\n") if event and event != "data: [DONE]"]
        choices = [choice for chunk in chunks for choice in chunk["choices"]]
    else:
        validate_openai("CreateCompletionResponse", response.json())
        choices = response.json()["choices"]
    assert "".join(choice["text"] for choice in choices) == ""
    assert choices[-1]["finish_reason"] == "stop"
    record = await RequestRecord.objects.aget()
    assert (record.endpoint, record.model, record.finish_reason) == ("/v1/completions", fim, "stop")


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/infill", {"input_prefix": "a", "input_suffix": "b"}, "model"),
        ("/v1/completions", {"prompt": "a", "suffix": "b"}, "suffix"),
    ],
)
async def test_a_model_without_fim_tokens_is_a_400_that_says_so(use_config, path: str, body: dict, param: str) -> None:
    response = await post(path, model=SMOLLM2, **body)
    assert response.status_code == 400, response.content
    validate_openai("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["param"] == param and "no FIM prefix or suffix or middle token" in error["message"]
    record = await RequestRecord.objects.aget()
    assert (record.endpoint, record.http_status) == (path, 400)


MISSING = "(missing)"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input_prefix": MISSING}, "input_prefix"),
        ({"input_suffix": MISSING}, "input_suffix"),
        ({"input_prefix": 1, "input_suffix": "b"}, "input_prefix"),
        ({"input_extra": "x"}, "input_extra"),
        ({"input_extra": [{"filename": "a.py"}]}, "input_extra"),
        ({"input_extra": [{"text": "x", "filename": 3}]}, "input_extra"),
        ({"prompt": ["a"]}, "prompt"),
        ({"n_predict": -2}, "n_predict"),
        ({"n_indent": -1}, "n_indent"),
        ({"n": 2}, "n"),
        ({"n_probs": 3}, "n_probs"),
        ({"grammar": "root ::= [a]"}, "grammar"),
        ({"samplers": 5}, "samplers"),
        ({"response_fields": "content"}, "response_fields"),
    ],
)
async def test_bad_bodies_are_400s_naming_the_field(fim: str, body: dict, param: str) -> None:
    body = {
        key: value for key, value in ({"input_prefix": "a", "input_suffix": "b"} | body).items() if value != MISSING
    }
    response = await post("/infill", model=fim, **body)
    assert response.status_code == 400, response.content
    validate_openai("ErrorResponse", response.json())
    assert response.json()["error"]["param"].split(".")[0].split("[")[0] == param
    record = await RequestRecord.objects.aget()
    assert (record.endpoint, record.http_status) == ("/infill", 400)


async def test_a_key_is_needed_where_keys_are_required(fim: str, use_config) -> None:
    use_config(server={"require_api_key": True})
    response = await post("/infill", model=fim, input_prefix="a", input_suffix="b")
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert not await RequestRecord.objects.aexists()


@pytest.mark.slow
async def test_a_keys_models_and_quota_hold(fim: str) -> None:
    _, other = await sync_to_async(key_services.api_key_create)(name="other", models=[SMOLLM2])
    headers = {"Authorization": f"Bearer {other}"}
    body = {"model": fim, **GAP, **FILL_ENDS_AT_ONCE}
    response = await AsyncClient().post("/infill", body, content_type="application/json", headers=headers)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    _, thrifty = await sync_to_async(key_services.api_key_create)(name="thrifty", tokens_per_day=10)
    headers = {"Authorization": f"Bearer {thrifty}"}
    response = await AsyncClient().post("/infill", body, content_type="application/json", headers=headers)
    assert response.status_code == 429 and response.json()["error"]["code"] == "quota_exceeded"
    assert response["x-ratelimit-limit-tokens"] == "10"


# --- the GGUF header says whether a model can fill in the middle ------------------------------


def vocabulary_file(path: Path, tokens: list[str], **ids: int) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(tokens)
    for key, value in ids.items():
        writer.add_uint32(f"tokenizer.ggml.{key}_token_id", value)
    writer.add_tensor("token_embd.weight", gguf.np.zeros((4, 4), dtype=gguf.np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_says_whether_a_model_fills_in_the_middle(
    tmp_path: Path, fim_file: Path, smollm2_file: Path
) -> None:
    assert read_gguf_info(fim_file).fill_in_middle and not read_gguf_info(smollm2_file).fill_in_middle
    qwen = ["a", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    assert read_gguf_info(vocabulary_file(tmp_path / "qwen.gguf", qwen)).fill_in_middle, "found by their texts"
    old_keys = vocabulary_file(tmp_path / "old.gguf", ["a", "b", "c"], prefix=0, suffix=1, middle=2)
    assert read_gguf_info(old_keys).fill_in_middle, "llama.cpp's deprecated keys"
    outside = vocabulary_file(tmp_path / "outside.gguf", ["a", "b", "c"], fim_pre=0, fim_suf=1, fim_mid=3)
    assert not read_gguf_info(outside).fill_in_middle, "an id outside the vocabulary is no token (llama.cpp)"
    assert not read_gguf_info(write_synthetic(tmp_path / "none.gguf")).fill_in_middle


def test_the_copys_splice_is_the_gguf_packages_round_trip(tmp_path: Path) -> None:
    source = vocabulary_file(tmp_path / "source.gguf", ["a", "b", "<c>"])
    spliced = write_with_metadata(source, tmp_path / "spliced.gguf", {"tokenizer.ggml.fim_pre_token_id": 2})
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(tmp_path / "written.gguf"), "llama")
    for field in reader.fields.values():
        if field.name != "general.architecture" and not field.name.startswith("GGUF."):
            kind = field.types[0]
            writer.add_key_value(
                field.name, field.contents(), kind, sub_type=field.types[-1] if len(field.types) > 1 else None
            )
    writer.add_uint32("tokenizer.ggml.fim_pre_token_id", 2)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
    assert spliced.read_bytes() == (tmp_path / "written.gguf").read_bytes()
