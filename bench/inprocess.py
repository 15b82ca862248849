"""Baseline 1: llama-cpp-python in-process (`Llama.create_chat_completion`, streaming), no server.

Runs as a subprocess of the harness: each line on stdin (`<max_tokens> <messages as JSON>`)
is one streamed completion, answered by one JSON line with what the harness's client measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--n-threads", type=int, required=True)
    parser.add_argument("--n-threads-batch", type=int, required=True)
    options = parser.parse_args()

    import llama_cpp

    llama = llama_cpp.Llama(
        options.model,
        n_ctx=options.n_ctx,
        n_threads=options.n_threads,
        n_threads_batch=options.n_threads_batch,
        flash_attn=True,  # as llama.cpp's "auto" chooses on the CPU (our default)
        verbose=False,
    )
    print("ready", flush=True)
    for line in sys.stdin:
        max_tokens, messages_json = line.rstrip("\n").split(" ", 1)
        messages = json.loads(messages_json)
        started = time.perf_counter()
        first = last = None
        tokens = 0
        for chunk in llama.create_chat_completion(messages, max_tokens=int(max_tokens), temperature=0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                tokens += 1
                last = time.perf_counter()
                first = first or last
        print(json.dumps({"ttft_s": first - started, "tokens": tokens, "first": first, "last": last}), flush=True)


if __name__ == "__main__":
    main()
