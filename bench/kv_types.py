"""Benchmark: the KV cache's element types (`type_k`/`type_v`: f16, q8_0, q4_0) on SmolLM2, in
process through this server's engine: the KV state a sequence holds after a long prompt (what
llama.cpp saves of it), the time to process that prompt, and greedy tokens/s after it; f16 is
the baseline, each in the same run, the types taking turns.

    .venv/bin/python -m bench.kv_types [--rounds 3] [--prompt-words 1500] [--tokens 128] [--out FILE]
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.__main__ import PROJECT_DIR, bench_parser, log_to_console, report, thread_counts

TYPES = ("f16", "q8_0", "q4_0")


def measure(kind: str, words: int, tokens: int) -> tuple[int, float, float]:
    """One type: the sequence's KV state in bytes, prompt seconds, tokens/s after it."""
    from inference.management.commands.install_default_model import bundled_default_model
    from inference.runtime.engine import GenerationEngine
    from inference.runtime.jobs import ChatJob, Finished, Sampling, TextDelta
    from inference.runtime.settings import LoadSettings

    threads, threads_batch = thread_counts()
    settings = LoadSettings(
        n_ctx=4096,
        n_gpu_layers=0,
        n_threads=threads,
        n_threads_batch=threads_batch,
        parallel=1,
        type_k=kind,
        type_v=kind,
    )
    text = "<|im_start|>user\n" + "The harbour office opens early. " * (words // 5) + "Summarise.<|im_end|>\n"
    job = ChatJob(
        messages=(),
        prompt_text=text + "<|im_start|>assistant\n",
        max_tokens=tokens,
        ignore_eos=True,
        sampling=Sampling(temperature=0),
    )
    engine = GenerationEngine("kv", bundled_default_model(), settings)
    try:
        started = time.perf_counter()
        engine.start("a", engine.prepare(job), lambda: False)
        first = end = None
        while engine.running:
            for _, event in engine.step():
                if isinstance(event, TextDelta | Finished):
                    end = time.perf_counter()
                    first = first or end
        assert first is not None and end is not None
        state = len(engine._context.save_sequence(0))
    finally:
        engine.close()
    return state, first - started, (tokens - 1) / (end - first)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-words", type=int, default=1500)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    log_to_console()
    sys.path.insert(0, str(PROJECT_DIR))
    runs: dict[str, list[tuple[int, float, float]]] = {kind: [] for kind in TYPES}
    for _ in range(args.rounds):
        for kind in TYPES:
            runs[kind].append(measure(kind, args.prompt_words, args.tokens))
    base = {name: statistics.median(run[index] for run in runs["f16"]) for index, name in enumerate("spt")}
    lines = [
        f"## KV cache types (SmolLM2, ~{args.prompt_words}-word prompt, {args.tokens} tokens, median of {args.rounds})",
        "",
        "| type_k = type_v | KV state of the sequence | prompt s | tokens/s after it |",
        "|---|---|---|---|",
    ]
    for kind in TYPES:
        state, prompt, speed = (statistics.median(run[index] for run in runs[kind]) for index in range(3))
        lines.append(
            f"| {kind} | {state / 2**20:.1f} MiB ({state / base['s']:.2f}×) | {prompt:.2f} ({prompt / base['p']:.2f}×) "
            f"| {speed:.1f} ({speed / base['t']:.2f}×) |"
        )
    report(lines, args.out)


if __name__ == "__main__":
    main()
