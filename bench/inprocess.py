"""Baseline 1: llama-cpp-python in-process (`Llama.create_chat_completion`, streaming), no server.

Run as a subprocess by the harness; prints one JSON line with the same figures the client
measures for servers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.client import MAX_TOKENS, PROMPT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-threads", type=int, required=True)
    parser.add_argument("--n-threads-batch", type=int, required=True)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()

    import llama_cpp

    llama = llama_cpp.Llama(
        options.model,
        n_ctx=options.n_ctx,
        n_threads=options.n_threads,
        n_threads_batch=options.n_threads_batch,
        verbose=False,
    )
    messages = [{"role": "user", "content": PROMPT}]

    def once() -> tuple[float, int, float]:
        started = time.perf_counter()
        first = last = None
        tokens = 0
        for chunk in llama.create_chat_completion(messages, max_tokens=MAX_TOKENS, temperature=0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                tokens += 1
                last = time.perf_counter()
                first = first or last
        return first - started, tokens, (tokens - 1) / (last - first)

    once()
    results = [once() for _ in range(options.runs)]
    print(json.dumps({
        "tokens_per_s": statistics.median(r[2] for r in results),
        "ttft_ms": statistics.median(r[0] for r in results) * 1000,
        "tokens": statistics.median(r[1] for r in results),
    }))


if __name__ == "__main__":
    main()
