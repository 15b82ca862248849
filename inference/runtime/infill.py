"""Fill in the middle: a gap's prompt laid out with the model's FIM tokens, as llama.cpp's server
lays out /infill (`format_prompt_infill` in its tools/server/server-common.cpp).

The layout, repo-level where the model has the tokens for it (https://arxiv.org/abs/2409.12186):

    [BOS] [FIM_REP]myproject\\n [FIM_SEP]file0\\n text0 … [FIM_SEP]filename\\n
          [FIM_PRE] prefix prompt [FIM_SUF] suffix [FIM_MID]

A model without FIM_SEP gets each extra file after a `--- snippet ---` line instead, and one
without FIM_REP no repository line. Unlike llama.cpp, the BOS (where the vocabulary adds one)
comes first, before the extra files: llama.cpp puts those before it.

Trimmed (llama.cpp's rule, for /infill): the prefix keeps its last 3/4·n_batch tokens, the suffix
its first n_batch/4 − 2 − len(prompt), the extra context its last n_ctx − n_batch − 2·n_predict
(n_batch capped to n_ctx, as llama.cpp's context caps it); where that still leaves no room to
generate, the extra context and then the prefix lose more from their start. Untrimmed
(/v1/completions' `suffix`), a prompt over the context is the engine's to refuse.

Pure and stdlib only: the model's tokenizer is passed in. Any thread may call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from inference.runtime.jobs import FillInMiddle

# Text into tokens without a BOS; `special`: special tokens' texts become those tokens.
Tokenize = Callable[[str, bool], list[int]]

# llama.cpp's placeholders (TODOs there: the project's and the current file's names as inputs).
REPOSITORY_LINE = "myproject\n"
CURRENT_FILE_LINE = "filename\n"
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"  # between extra files, for a model without FIM_SEP
FIM_NAMES = ("prefix", "suffix", "middle")  # the tokens a model must have to fill in the middle


@dataclass(frozen=True)
class FimTokens:
    """A vocabulary's fill-in-the-middle tokens (llama.cpp's `llama_vocab_fim_*`)."""

    prefix: int
    suffix: int
    middle: int
    repository: int | None = None  # FIM_REP: opens repo-level context
    file_separator: int | None = None  # FIM_SEP: before each file's name
    bos: int | None = None  # the BOS, where the vocabulary adds one


def infill_tokens(
    fill: FillInMiddle, fim: FimTokens, tokenize: Tokenize, *, n_ctx: int, n_batch: int, n_predict: int | None
) -> list[int]:
    """The gap's prompt as tokens (see the module for the layout and the trimming)."""
    prefix = tokenize(fill.prefix, False)
    suffix = tokenize(fill.suffix, False)
    prompt = tokenize(fill.prompt, True)
    extra = _extra_tokens(fill, fim, tokenize)
    if fill.trim:
        n_batch = min(n_batch, n_ctx)
        prefix = prefix[len(prefix) - min(len(prefix), 3 * (n_batch // 4)) :]
        suffix = suffix[: max(0, n_batch // 4 - (2 + len(prompt)))]
        # Room for the answer; what is over it comes off the extra context, then off the prefix.
        over = int(fim.bos is not None) + len(prefix) + len(prompt) + len(suffix) + 3 - (n_ctx - 1)
        extra_room = min(n_ctx - n_batch - 2 * (n_predict or 0), -over)
        extra = extra[len(extra) - min(len(extra), max(0, extra_room)) :]
        prefix = prefix[min(len(prefix), max(0, over)) :]
    start = [fim.bos] if fim.bos is not None else []
    return [*start, *extra, fim.prefix, *prefix, *prompt, fim.suffix, *suffix, fim.middle]


def _extra_tokens(fill: FillInMiddle, fim: FimTokens, tokenize: Tokenize) -> list[int]:
    """The project's other files before the gap's (repo-level FIM), and the current file's line."""
    tokens: list[int] = []
    if fim.repository is not None:
        tokens += [fim.repository, *tokenize(REPOSITORY_LINE, False)]
    for file in fill.extra:
        if fim.file_separator is not None:
            tokens += [fim.file_separator, *tokenize(f"{file.filename}\n", False)]
        else:
            tokens += tokenize(SNIPPET_SEPARATOR, False)
        tokens += tokenize(file.text, False)
    if fim.file_separator is not None:
        tokens += [fim.file_separator, *tokenize(CURRENT_FILE_LINE, False)]
    return tokens
