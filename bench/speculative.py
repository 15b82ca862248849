"""Benchmark: code edits and plain chat with speculative decoding (model_manager.speculative).

Starts this server twice on the bundled SmolLM2, with speculative "ngram" and "off", and, given
its binary, llama.cpp's server with its defaults (no speculative decoding) and with its own
prompt-lookup drafting (`--spec-type ngram-simple`, `ngram-mod`); goes round them all (every
other round in reverse, so the machine's drift hits each alike) for
  - code edits: "rewrite this ~400-token function with one change", for three changes, greedy,
    up to 512 tokens;
  - plain chat: the story prompt of `python -m bench`, greedy, 128 tokens;
then 4 clients × 4 plain chats at once on each. Prints a table of the medians (tokens/s after the
first token, per stream; aggregate tokens/s for the 4 clients) with each server's ratio to
llama.cpp's server with its defaults (or to ours with "off", without it), and how many of the
drafted tokens our server accepted (from its request records). `--out FILE` appends the table.

Each prompt is asked again in every run, and both our drafting and `ngram-mod` draft from
earlier answers (ours from the model's recent answers, `ngram-mod` from its table of every
sequence it saw): a row gives the code edits' first runs apart, before their answers were given.

    .venv/bin/python -m bench.speculative [--runs 7] [--llama-server PATH] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

from bench import client
from bench.__main__ import bench_parser, log_to_console, report, thread_counts
from bench.servers import Running, llama_cpp_server, llamasite
from inference.management.commands.install_default_model import bundled_default_model

logger = logging.getLogger("bench.speculative")
SETTINGS = {"n_ctx": 4096, "parallel": 4}
OURS, OFF = "llamasite (ngram)", "llamasite, speculative off"
LLAMA_CPP_DEFAULTS = "llama.cpp server"
LLAMA_CPP = {
    LLAMA_CPP_DEFAULTS: [],
    "llama.cpp server, ngram-simple": ["--spec-type", "ngram-simple"],
    "llama.cpp server, ngram-mod": ["--spec-type", "ngram-mod"],
}
FUNCTION = '''\
def summarise_orders(orders, customers, since=None, currency="EUR"):
    """Totals per customer of the orders placed since a date, in one currency.

    Orders whose customer is unknown are counted apart; refunded orders are left out.
    """
    rates = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.04}
    if currency not in rates:
        raise ValueError(f"unknown currency: {currency}")
    totals = {}
    unknown = 0
    for order in orders:
        if since is not None and order["placed_at"] < since:
            continue
        if order.get("refunded"):
            continue
        customer = customers.get(order["customer_id"])
        if customer is None:
            unknown += 1
            continue
        amount = order["amount"] * rates[order["currency"]] / rates[currency]
        entry = totals.setdefault(customer["name"], {"orders": 0, "amount": 0.0, "largest": 0.0})
        entry["orders"] += 1
        entry["amount"] += amount
        entry["largest"] = max(entry["largest"], amount)
    for name, entry in totals.items():
        entry["amount"] = round(entry["amount"], 2)
        entry["average"] = round(entry["amount"] / entry["orders"], 2)
        entry["largest"] = round(entry["largest"], 2)
    report = {"currency": currency, "customers": totals, "unknown_customers": unknown}
    if since is not None:
        report["since"] = since.isoformat()
    return report
'''
CHANGES = (
    "rename the parameter `orders` to `purchases`",
    'make "USD" the default currency',
    'add the rate "JPY": 0.0061',
)
FIGURES = {
    **{
        f"code edit {number}": (
            [
                {
                    "role": "user",
                    "content": f"Rewrite this function with one change: {change}. "
                    f"Reply with the whole function.\n\n```python\n{FUNCTION}```",
                }
            ],
            512,
        )
        for number, change in enumerate(CHANGES, start=1)
    },
    "plain chat": ([{"role": "user", "content": client.PROMPT}], client.MAX_TOKENS),
}


def stream(running: Running, messages: list[dict[str, str]], max_tokens: int) -> client.Stream:
    return asyncio.run(client.stream_chat(running.url, running.model, max_tokens, messages=messages))


def drafts(running: Running, streams: list[client.Stream]) -> tuple[int, int]:
    """Draft tokens proposed and accepted over these streams, from the server's records."""
    ids = [s.completion_id for s in streams]
    with sqlite3.connect(running.workdir / "db.sqlite3") as database:
        [(proposed, accepted)] = database.execute(
            "SELECT SUM(draft_tokens_proposed), SUM(draft_tokens_accepted) FROM inference_requestrecord "
            f"WHERE completion_id IN ({', '.join('?' * len(ids))})",
            ids,
        ).fetchall()
    return proposed or 0, accepted or 0


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=7)
    options = parser.parse_args()
    log_to_console()
    model_path, threads = bundled_default_model(), thread_counts()
    ours = {**SETTINGS, "n_threads": threads[0], "n_threads_batch": threads[1]}
    starts: dict[str, Callable[[], AbstractContextManager[Running]]] = {
        OURS: lambda: llamasite(model_path, {**ours, "speculative": "ngram"}),
        OFF: lambda: llamasite(model_path, {**ours, "speculative": "off"}),
    }
    if options.llama_server:
        for name, extra in LLAMA_CPP.items():
            starts[name] = lambda extra=extra: llama_cpp_server(
                options.llama_server, model_path, SETTINGS["n_ctx"], threads, SETTINGS["parallel"], extra
            )
    names = list(starts)
    streams: dict[tuple[str, str], list[client.Stream]] = {(f, n): [] for f in FIGURES for n in names}
    concurrent: dict[str, client.Concurrent] = {}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(start()) for name, start in starts.items()}
        for running in servers.values():
            for messages, _ in FIGURES.values():
                stream(running, messages, 8)  # warm-up: the load, the prompt cache
        for run in range(options.runs):
            for name in names if run % 2 == 0 else names[::-1]:
                for figure, (messages, max_tokens) in FIGURES.items():
                    streams[figure, name].append(stream(servers[name], messages, max_tokens))
        for run in range(2):
            for name in names if run % 2 == 0 else names[::-1]:
                running = servers[name]
                result = asyncio.run(client.concurrent_streams(running.url, running.model, 4, 2, None))
                concurrent[name] = concurrent[name] + result if name in concurrent else result
        accepted = {figure: drafts(servers[OURS], streams[figure, OURS]) for figure in FIGURES}
        accepted["4 clients"] = drafts(servers[OURS], concurrent[OURS].streams)
    baseline = LLAMA_CPP_DEFAULTS if options.llama_server else OFF
    report(_report_lines(names, streams, concurrent, accepted, baseline, options.runs), options.out)


def _report_lines(
    names: list[str],
    streams: dict[tuple[str, str], list[client.Stream]],
    concurrent: dict[str, client.Concurrent],
    accepted: dict[str, tuple[int, int]],
    baseline: str,
    runs: int,
) -> list[str]:
    """The table of medians (ratios to `baseline`), then the drafts' acceptance and answer lengths."""
    rows = {
        f"{figure}: tokens/s": {n: statistics.median(s.decode_tokens_per_s for s in streams[figure, n]) for n in names}
        for figure in FIGURES
    }
    edits = [figure for figure in FIGURES if figure.startswith("code edit")]
    rows["code edits, all: tokens/s"] = {
        n: statistics.median(s.decode_tokens_per_s for figure in edits for s in streams[figure, n]) for n in names
    }
    rows["code edits, first run of each: tokens/s"] = {
        n: statistics.median(streams[figure, n][0].decode_tokens_per_s for figure in edits) for n in names
    }
    rows["4 clients × 4 plain chats: aggregate tokens/s"] = {
        n: concurrent[n].figures()["aggregate_tokens_per_s"] for n in names
    }
    lines = [
        f"## Speculative decoding: code edits and plain chat (median of {runs}; ratios to {baseline})",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for title, figure in rows.items():
        cells = [f"{figure[n]:.1f} ({figure[n] / figure[baseline]:.2f}×)" for n in names]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    for figure, (proposed, taken) in accepted.items():
        share = f"{taken / proposed:.0%}" if proposed else "–"
        lines.append(f"- {OURS}, {figure}: {proposed} draft tokens proposed, {taken} accepted ({share})")
    for figure in FIGURES:
        lengths = ", ".join(f"{n} {statistics.median(s.tokens for s in streams[figure, n]):.0f}" for n in names)
        lines.append(f"- {figure}: median tokens per answer: {lengths}")
    return lines


if __name__ == "__main__":
    main()
