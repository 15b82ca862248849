"""POST /v1/rerank (and /rerank, /v1/reranking), llama.cpp server's reranking: a generating model
(SmolLM2) scores documents by its probability of answering "yes" beside its slots; a reranker GGUF
(a tiny random-weight Qwen3 reranker written here, pooled by rank) with its classifier head, as
llama.cpp's own server scores it; which way is chosen; the scorer's invariants over random jobs
against a fake context; the answer's shape, records and errors."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.test import AsyncClient
from django.utils.timezone import now
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.api.openapi import RERANK_SCHEMA
from inference.config import MODEL_KEYS, get_config, load_config
from inference.models import DiscoveredModel, RequestRecord
from inference.runtime.engine import GenerationEngine
from inference.runtime.gguf_header import read_gguf_info
from inference.runtime.jobs import (
    DOCUMENT_MARKER,
    QUERY_MARKER,
    ChatMessage,
    Finished,
    Prepared,
    Ranked,
    RerankJob,
    RerankMode,
    Sampling,
    TextDelta,
)
from inference.runtime.pool import model_pool
from inference.runtime.scheduler import BatchToken
from inference.runtime.scoring import PairSpecials, YesNoScorer, pair_prompt
from inference.runtime.settings import LoadSettings
from inference.runtime.slots import SlotMemory
from inference.serving.prompts import ModelFormat
from inference.serving.rerank import PLAIN_PROMPT, YES_NO_QUESTION, yes_no_prompt
from inference.templates import ChatTemplate
from tests.chat_prompts import smollm2_chat
from tests.conftest import SMOLLM2, link_model
from tests.gguf_files import write_reranker

QUESTION = "How many legs does a spider have?"
RELEVANT = "Spiders have eight legs."
IRRELEVANT = "The stock market fell sharply on Monday."
TEMPLATES = Path(__file__).parent / "data" / "templates"
RERANKER = "tiny-reranker"
GREEDY = Sampling(temperature=0)
# llama.cpp's own server (built from the llama.cpp that llama-cpp-python 0.3.36 vendors, `llama-server
# -m tiny-reranker.gguf --reranking`) on write_reranker()'s model: these documents' scores and usage.
REFERENCE_DOCUMENTS = ["a b c", "Paris is nice", "x" * 50]
REFERENCE_TEMPLATE = "<|im_start|>Q: {query}\nD: {document}<|im_end|>"
REFERENCE = {
    "template": ([0.4795680046081543, 0.24697093665599823, 0.6187072992324829], 47),
    "around_pairs": ([0.5429024696350098, 0.2309953272342682, 0.5582094788551331], 37),
}


async def rerank(path: str = "/v1/rerank", **body: Any) -> Any:
    return await AsyncClient().post(path, body, content_type="application/json")


def scores_by_index(body: dict[str, Any]) -> dict[int, float]:
    return {result["index"]: result["relevance_score"] for result in body["results"]}


@pytest.fixture(scope="session")
def reranker_files(tmp_path_factory: pytest.TempPathFactory, smollm2_file: Path) -> dict[str, Path]:
    """The tiny reranker with its own rerank template, and without one (BOS, EOS, SEP around pairs)."""
    directory = tmp_path_factory.mktemp("rerankers")
    return {
        "template": write_reranker(directory / "template.gguf", smollm2_file, template=REFERENCE_TEMPLATE),
        "around_pairs": write_reranker(directory / "around.gguf", smollm2_file, around_pairs=True),
    }


# --- the answer -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_scores_by_yes_best_first_with_top_n_documents_and_a_record_each(use_config) -> None:
    documents = [IRRELEVANT, RELEVANT, "Bananas are yellow."]
    response = await rerank(model=SMOLLM2, query=QUESTION, documents=documents)
    body = response.json()
    assert response.status_code == 200, body
    jsonschema.validate(body, RERANK_SCHEMA)
    assert body["object"] == "list" and body["model"] == SMOLLM2
    scores = [result["relevance_score"] for result in body["results"]]
    assert sorted(result["index"] for result in body["results"]) == [0, 1, 2]
    assert scores == sorted(scores, reverse=True) and all(0 < score < 1 for score in scores)
    assert scores_by_index(body)[1] > scores_by_index(body)[0], "the spider's legs answer the question"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3 * 40
    assert all("document" not in result for result in body["results"])
    top = (await rerank(model=SMOLLM2, query=QUESTION, documents=documents, top_n=2, return_documents=True)).json()
    assert [(r["index"], r["relevance_score"]) for r in top["results"]] == [
        (r["index"], r["relevance_score"]) for r in body["results"][:2]
    ]
    assert [r["document"] for r in top["results"]] == [{"text": documents[r["index"]]} for r in top["results"]]
    for alias in ("/rerank", "/v1/reranking"):
        again = await rerank(alias, model=SMOLLM2, query=QUESTION, documents=documents)
        assert again.json()["results"] == body["results"], "the same request, the same scores"
    records = [record async for record in RequestRecord.objects.order_by("id")]
    assert [(r.endpoint, r.model, r.status, r.prompt_tokens) for r in records] == [
        (path, SMOLLM2, RequestRecord.Status.OK, body["usage"]["prompt_tokens"])
        for path in ("/v1/rerank", "/v1/rerank", "/rerank", "/v1/reranking")
    ]
    assert SMOLLM2 in model_pool().loaded_models(), "yes_no runs on the generating model, not an embedding context"


@pytest.mark.slow
async def test_forty_documents_at_once_scored_alike_twice(use_config) -> None:
    fillers = [f"Note {number}: the weather in Lisbon was mild, with {number} mm of rain." for number in range(38)]
    documents = [RELEVANT, IRRELEVANT, *fillers]
    started = time.monotonic()
    first = await rerank(model=SMOLLM2, query=QUESTION, documents=documents)
    elapsed = time.monotonic() - started
    assert first.status_code == 200, first.content
    second = await rerank(model=SMOLLM2, query=QUESTION, documents=documents)
    assert first.json() == second.json()
    scores = scores_by_index(first.json())
    assert sorted(scores) == list(range(40)) and scores[0] > scores[1]
    print(f"40 documents reranked in {elapsed:.2f} s")  # shown with -s; the report quotes it


@pytest.mark.slow
async def test_a_document_longer_than_the_context_is_a_400_naming_it(use_config) -> None:
    use_config(n_ctx=256)
    response = await rerank(model=SMOLLM2, query=QUESTION, documents=[RELEVANT, "legs " * 400, RELEVANT])
    error = response.json()["error"]
    assert response.status_code == 400, error
    assert error["code"] == "context_length_exceeded" and error["param"] == "documents[1]"
    assert "documents[1]" in error["message"] and "256" in error["message"]
    assert (await rerank(model=SMOLLM2, query=QUESTION, documents=[RELEVANT])).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"query": QUESTION, "documents": []}, 400, "documents"),
        ({"query": QUESTION}, 400, "documents"),
        ({"documents": [RELEVANT]}, 400, "query"),
        ({"query": 5, "documents": [RELEVANT]}, 400, "query"),
        ({"query": QUESTION, "documents": RELEVANT}, 400, "documents"),
        ({"query": QUESTION, "documents": [RELEVANT, 7]}, 400, "documents"),
        ({"query": QUESTION, "documents": [{"text": RELEVANT}]}, 400, "documents"),
        ({"query": QUESTION, "documents": [RELEVANT] * 2049}, 400, "documents"),
        ({"query": QUESTION, "documents": [RELEVANT], "top_n": 0}, 400, "top_n"),
        ({"query": QUESTION, "documents": [RELEVANT], "top_n": "2"}, 400, "top_n"),
        ({"query": QUESTION, "documents": [RELEVANT], "return_documents": "yes"}, 400, "return_documents"),
        ({"model": "nope", "query": QUESTION, "documents": [RELEVANT]}, 404, "model"),
    ],
)
async def test_bad_requests_in_openais_envelope_each_recorded(
    use_config, body: dict[str, Any], status: int, param: str
) -> None:
    response = await rerank(**body)
    error = response.json()["error"]
    assert response.status_code == status, error
    assert error["param"] == param and error["message"] and set(error) == {"message", "type", "param", "code"}
    if status == 404:
        assert error["code"] == "model_not_found"
    assert [record.http_status async for record in RequestRecord.objects.all()] == [status]


# --- a reranker: rank pooling -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["template", "around_pairs"])
async def test_a_reranker_scores_as_llama_cpps_server(use_config, reranker_files, layout: str) -> None:
    link_model(reranker_files[layout], Path(load_config().model_manager.models_directory), RERANKER)
    response = await rerank(model=RERANKER, query="what?", documents=REFERENCE_DOCUMENTS)
    body = response.json()
    assert response.status_code == 200, body
    expected, tokens = REFERENCE[layout]
    assert scores_by_index(body) == pytest.approx(dict(enumerate(expected)), abs=1e-4)
    assert body["usage"]["prompt_tokens"] == tokens
    assert f"{RERANKER} (embeddings)" in model_pool().loaded_models(), "rank pooling is the embedding context's"
    refused = await AsyncClient().post("/v1/embeddings", {"model": RERANKER, "input": "x"}, "application/json")
    assert refused.status_code == 400 and "is a reranker" in refused.json()["error"]["message"]


@pytest.mark.slow
async def test_a_rerankers_pairs_fill_decodes_up_to_its_context(use_config, reranker_files) -> None:
    use_config(n_ctx=300)  # llama.cpp makes it 512, but a decode holds 300 tokens
    link_model(reranker_files["around_pairs"], Path(load_config().model_manager.models_directory), RERANKER)
    long = "word " * 140  # 140 tokens and the pair's 7: two fill one decode, three do not
    many = await rerank(model=RERANKER, query="what?", documents=[long, "x", long, long])
    assert many.status_code == 200, many.content
    alone = (await rerank(model=RERANKER, query="what?", documents=["x"])).json()
    assert scores_by_index(many.json())[1] == pytest.approx(scores_by_index(alone)[0], abs=1e-3)  # F16 attention
    too_long = await rerank(model=RERANKER, query="what?", documents=["x", "word " * 300])
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "documents[1]"
    assert (await rerank(model=RERANKER, query="what?", documents=["x"])).status_code == 200, "still loaded"


@pytest.mark.slow
async def test_the_setting_picks_the_way(use_config, reranker_files) -> None:
    models = Path(load_config().model_manager.models_directory)
    link_model(reranker_files["template"], models, RERANKER)
    use_config(models={RERANKER: {"reranker": "yes_no"}, SMOLLM2: {"reranker": "rank"}})
    asked = await rerank(model=RERANKER, query="what?", documents=REFERENCE_DOCUMENTS)
    assert asked.status_code == 200, asked.content
    assert RERANKER in model_pool().loaded_models(), "yes_no: the reranker's generating context"
    assert all(0 < score < 1 for score in scores_by_index(asked.json()).values())
    forced = await rerank(model=SMOLLM2, query=QUESTION, documents=[RELEVANT, IRRELEVANT])
    assert forced.status_code == 200, forced.content
    assert f"{SMOLLM2} (embeddings)" in model_pool().loaded_models(), "rank: forced on its embedding context"


@pytest.mark.slow
async def test_the_admins_setting_wins(use_config) -> None:
    await DiscoveredModel.objects.aupdate_or_create(
        instance=get_config().server.instance,
        name=SMOLLM2,
        defaults={"path": "-", "size_bytes": 1, "file_modified_at": now(), "last_seen_at": now(), "reranker": "rank"},
    )
    response = await rerank(model=SMOLLM2, query=QUESTION, documents=[RELEVANT])
    assert response.status_code == 200, response.content
    assert model_pool().loaded_models() == [f"{SMOLLM2} (embeddings)"], "rank, as saved in the admin"


@pytest.mark.parametrize(
    ("setting", "reranker", "mode"),
    [
        ("auto", True, RerankMode.RANK),
        ("auto", False, RerankMode.YES_NO),
        ("rank", False, RerankMode.RANK),
        ("yes_no", True, RerankMode.YES_NO),
    ],
)
def test_the_mode_of_a_setting_and_a_gguf(setting: str, reranker: bool, mode: RerankMode) -> None:
    assert RerankMode.chosen(setting, reranker) is mode
    assert RerankJob(query="", documents=("",), mode=mode).on_embedding_context == (mode is RerankMode.RANK)


def test_the_gguf_says_whether_it_is_a_reranker(reranker_files, smollm2_file: Path) -> None:
    info = read_gguf_info(reranker_files["template"])
    assert info.reranker and info.pooling_type == 4 and info.rerank_template == REFERENCE_TEMPLATE
    assert not read_gguf_info(smollm2_file).reranker and read_gguf_info(smollm2_file).rerank_template is None
    assert MODEL_KEYS["reranker"].default == "auto" and MODEL_KEYS["reranker"].problem("sometimes")


# --- prompts ----------------------------------------------------------------------------------


class Letters:
    """A vocabulary of one token per character (its code point), "<s>" and "<sep>" special."""

    SPECIAL = {"<s>": 1000, "<sep>": 1001}

    def tokenize(self, text: str, *, add_special: bool, special: bool = True) -> list[int]:
        tokens: list[int] = []
        while text:
            name = next((name for name in self.SPECIAL if special and text.startswith(name)), None)
            tokens.append(self.SPECIAL[name] if name else ord(text[0]))
            text = text[len(name) if name else 1 :]
        return tokens


def test_pairs_without_a_template_are_laid_out_as_llama_cpps_server_does() -> None:
    specials = PairSpecials(bos=1, eos=2, sep=3)
    assert pair_prompt(Letters(), None, "q<s>", "d", specials=specials, bos=False) == [1, *b"q<s>", 2, 3, *b"d", 2]
    assert pair_prompt(Letters(), None, "q", "d", specials=PairSpecials(None, 2, None), bos=True) == [
        *b"q",
        2,
        *b"d",
        2,
    ]


def test_a_templates_text_is_parsed_and_the_pairs_is_not() -> None:
    template = f"<s>Q: {QUERY_MARKER}<sep>D:  {DOCUMENT_MARKER} end "
    prompt = pair_prompt(Letters(), template, "a<s>", "b", specials=PairSpecials(1000, None, None), bos=True)
    # The spaces before a marker go with the text after it; the query's "<s>" stays text.
    assert prompt == [1000, *b"Q:", *b" a<s>", 1001, *b"D:", *b"  b", *b" end "]
    assert pair_prompt(Letters(), f"Q:{QUERY_MARKER}", "x", "y", specials=PairSpecials(7, None, None), bos=True)[0] == 7
    assert (
        pair_prompt(Letters(), f"Q:{QUERY_MARKER}", "x", "y", specials=PairSpecials(7, None, None), bos=False)[0] != 7
    )


def model_format(name: str | None, **settings: Any) -> ModelFormat:
    defaults = replace(load_config(Path("/nonexistent/config.json")).model_manager.defaults, **settings)
    template = ChatTemplate((TEMPLATES / f"{name}.jinja").read_text()) if name else None
    return ModelFormat(name or "base", template, defaults)


def smollm2_format(smollm2_file: Path) -> ModelFormat:
    defaults = load_config(Path("/nonexistent/config.json")).model_manager.defaults
    return ModelFormat(SMOLLM2, ChatTemplate(read_gguf_info(smollm2_file).chat_template or ""), defaults)


def test_the_yes_no_question_in_the_models_template_thinking_off() -> None:
    qwen = yes_no_prompt(model_format("Qwen-Qwen3-0.6B"))
    assert qwen.startswith("<|im_start|>user\n") and qwen.endswith("<think>\n\n</think>\n\n")
    assert qwen.index(QUERY_MARKER) < qwen.index(DOCUMENT_MARKER), "the query first: shared by every document"
    r1 = yes_no_prompt(model_format("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"))
    assert r1.endswith("</think>"), "a template that opens thinking has it closed"
    assert yes_no_prompt(model_format(None)) == PLAIN_PROMPT and YES_NO_QUESTION in PLAIN_PROMPT


# --- the scorer, against a fake context ----------------------------------------------------------


class FakeContext:
    """Sequences as llama.cpp's unified cache holds them: each position's token, shared by a copy.
    A "score" is a digest of the whole sequence up to the token it is read at, so a document's is
    right only if its sequence holds exactly its prompt."""

    def __init__(self, batch_capacity: int) -> None:
        self.batch_capacity = batch_capacity
        self.sequences: dict[int, dict[int, int]] = defaultdict(dict)
        self.last: list[BatchToken] = []

    def decode(self, batch: list[BatchToken]) -> None:
        assert 0 < len(batch) <= self.batch_capacity
        for token, position, seq_id, _ in batch:
            assert position == len(self.sequences[seq_id]), "positions follow on, from 0"
            self.sequences[seq_id][position] = token
        self.last = batch

    def yes_probability(self, index: int) -> float:
        _, position, seq_id, logits = self.last[index]
        assert logits
        return digest([self.sequences[seq_id][at] for at in range(position + 1)])

    def forget(self, seq_id: int, keep: int) -> None:
        self.sequences[seq_id] = {at: token for at, token in self.sequences[seq_id].items() if at < keep}

    def share(self, source: int, target: int, start: int = 0, end: int = -1) -> None:
        assert len(self.sequences[target]) == start, "the target holds the source's first positions"
        copied = {at: token for at, token in self.sequences[source].items() if at >= start and (end < 0 or at < end)}
        self.sequences[target] |= copied

    def save_sequence(self, seq_id: int) -> bytes:
        raise AssertionError("the scorer's sequences never go to the prompt cache")

    def restore_sequence(self, seq_id: int, state: bytes) -> bool:
        raise AssertionError("the scorer's sequences never go to the prompt cache")


def digest(tokens: list[int]) -> float:
    return int.from_bytes(hashlib.sha256(repr(tokens).encode()).digest()[:6]) / 2**48


jobs = st.lists(
    st.tuples(
        st.lists(st.integers(0, 9), max_size=12),  # the shared prefix
        st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=20), min_size=1, max_size=24),  # documents
        st.integers(0, 40),  # cancelled at this step (40: never)
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    jobs=jobs,
    capacity=st.integers(1, 40),
    n_ctx=st.integers(40, 120),
    held=st.integers(0, 30),
    released_at=st.integers(0, 60),
)
def test_every_document_is_scored_on_its_own_prompt_and_every_cell_comes_back(
    jobs: list[tuple[list[int], list[list[int]], int]], capacity: int, n_ctx: int, held: int, released_at: int
) -> None:
    context = FakeContext(capacity)
    memory = SlotMemory(context, 2, n_ctx, reserved=lambda: 0, cache=None)
    busy = memory.slots[0]  # a generating request's cells until `released_at`: no room is made from them
    busy.choice = object()
    for token in range(held):
        memory.cells.append(busy, token)
    clock = [0]
    generating = lambda: int(busy.choice is not None)  # noqa: E731  # its next token's cell stays free
    scorer: YesNoScorer[int] = YesNoScorer(context, memory, range(2, 2 + 1 + 5), spare=generating)
    prompts_of: dict[int, tuple[list[int], ...]] = {}
    for key, (prefix, documents, cancel_at) in enumerate(jobs):
        prompts = tuple([*prefix, *document][:n_ctx] for document in documents)  # each fits, as prepare makes sure
        job = RerankJob(query="", documents=(), mode=RerankMode.YES_NO)
        scorer.admit(key, Prepared(job, [], inputs=prompts), lambda at=cancel_at: clock[0] >= at < 40)
        prompts_of[key] = prompts
    events: dict[int, list[Any]] = defaultdict(list)
    while scorer.busy:
        if clock[0] == released_at:
            memory.cells.drop(busy, 0)
            busy.choice = None
        for key, event in scorer.step():
            events[key].append(event)
        assert len(memory.cells) + generating() <= n_ctx
        clock[0] += 1
        assert clock[0] < 3000, "the scorer makes progress"
    assert len(memory.cells) == len(busy.tokens) and all(not context.sequences[seq] for seq in range(2, 8))
    for key, prompts in prompts_of.items():
        *ranked, finished = events[key]
        assert isinstance(finished, Finished) and finished.prompt_tokens == sum(map(len, prompts))
        if finished.finish_reason == "stop":
            assert [type(event) for event in ranked] == [Ranked]
            assert list(ranked[0].scores) == [digest(prompt) for prompt in prompts]
        else:
            assert finished.finish_reason == "cancelled" and not ranked


# --- beside generating requests ----------------------------------------------------------------


@pytest.mark.slow
def test_scoring_steps_come_between_a_generations_and_give_back_their_cells(smollm2_file: Path) -> None:
    settings = LoadSettings(n_ctx=2048, n_gpu_layers=0, n_threads=1, n_threads_batch=2, parallel=2)
    engine: GenerationEngine[str] = GenerationEngine("smollm2", smollm2_file, settings)
    try:
        chat = smollm2_chat(
            [ChatMessage("user", "Count to a hundred.")], max_tokens=40, sampling=GREEDY, ignore_eos=True
        )
        assert engine.start("chat", engine.prepare(chat), lambda: False) is not None
        template = yes_no_prompt(smollm2_format(smollm2_file))
        job = RerankJob(
            query=QUESTION, documents=(RELEVANT, IRRELEVANT) * 10, mode=RerankMode.YES_NO, template=template
        )
        accepted = engine.start("rerank", engine.prepare(job), lambda: False)
        assert accepted is not None and accepted.prompt_tokens > 20 * 40
        order: list[str] = []
        while engine.running or not order or order[-1] != "rerank":
            for key, event in engine.step():
                if isinstance(event, (TextDelta, Finished)):
                    order.append(key)
            if "chat" in order and order.count("chat") > 40:
                break
        assert order.index("rerank") < len(order) - 1, "the rerank ended while the chat generated"
        while engine.running:
            engine.step()
        gone = engine.start("gone", engine.prepare(job), lambda: True)  # its client hung up
        assert gone is not None and [(key, event.finish_reason) for key, event in engine.step()] == [
            ("gone", "cancelled")
        ]
        memory = engine._scheduler.memory
        assert len(memory.cells) == sum(len(slot.tokens) for slot in memory.slots), "only the slots' caches"
        assert engine.free_slots == 2
    finally:
        engine.close()
