"""Benchmark: what speculative decoding (model_manager.speculative) gains, and what it costs.

Starts this server twice on the bundled SmolLM2, with speculative "ngram" and "off", and goes
round the two (every other round in reverse, so the machine's drift hits both alike) for
  - code edits: "rewrite this ~400-token function with one change", for three changes, greedy,
    up to 512 tokens;
  - plain chat: the story prompt of `python -m bench`, greedy, 128 tokens;
then 4 clients × 4 plain chats at once on each. Prints the medians (tokens/s after the first
token, per stream; aggregate tokens/s for the 4 clients), the ratio ngram / off, and how many of
the drafted tokens the model accepted (from the "ngram" server's request records).

    .venv/bin/python -m bench.speculative [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import statistics

from bench import client
from bench.servers import Running, llamasite
from inference.management.commands.install_default_model import bundled_default_model

logger = logging.getLogger("bench.speculative")
SETTINGS = {"n_ctx": 4096, "parallel": 4}
MODES = ("ngram", "off")
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
            [{"role": "user", "content": f"Rewrite this function with one change: {change}. "
              f"Reply with the whole function.\n\n```python\n{FUNCTION}```"}],
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model_path = bundled_default_model()
    streams: dict[tuple[str, str], list[client.Stream]] = {(f, m): [] for f in FIGURES for m in MODES}
    concurrent: dict[str, client.Concurrent] = {}
    with llamasite(model_path, {**SETTINGS, "speculative": "ngram"}) as ngram, llamasite(
        model_path, {**SETTINGS, "speculative": "off"}
    ) as off:
        servers = {"ngram": ngram, "off": off}
        for running in servers.values():
            for messages, _ in FIGURES.values():
                stream(running, messages, 8)  # warm-up: the load, the prompt cache
        for run in range(runs):
            for mode in MODES if run % 2 == 0 else MODES[::-1]:
                for figure, (messages, max_tokens) in FIGURES.items():
                    streams[figure, mode].append(stream(servers[mode], messages, max_tokens))
        for run in range(2):
            for mode in MODES if run % 2 == 0 else MODES[::-1]:
                running = servers[mode]
                result = asyncio.run(client.concurrent_streams(running.url, running.model, 4, 2, None))
                concurrent[mode] = concurrent[mode] + result if mode in concurrent else result
        accepted = {figure: drafts(ngram, streams[figure, "ngram"]) for figure in FIGURES}
        accepted["4 clients"] = drafts(ngram, concurrent["ngram"].streams)
    rows = {
        f"{figure}: tokens/s": {m: statistics.median(s.decode_tokens_per_s for s in streams[figure, m]) for m in MODES}
        for figure in FIGURES
    }
    edits = [figure for figure in FIGURES if figure.startswith("code edit")]
    rows["code edits, all: tokens/s"] = {
        mode: statistics.median(s.decode_tokens_per_s for figure in edits for s in streams[figure, mode]) for mode in MODES
    }
    rows["4 clients × 4 plain chats: aggregate tokens/s"] = {
        mode: concurrent[mode].figures()["aggregate_tokens_per_s"] for mode in MODES
    }
    logger.info("%-46s %8s %8s %7s", "median", "ngram", "off", "ratio")
    for title, figure in rows.items():
        logger.info("%-46s %8.1f %8.1f %6.2fx", title, figure["ngram"], figure["off"], figure["ngram"] / figure["off"])
    for figure, (proposed, taken) in accepted.items():
        share = f"{taken / proposed:.0%}" if proposed else "–"
        logger.info("%s: %d draft tokens proposed, %d accepted (%s)", figure, proposed, taken, share)
    for figure in FIGURES:
        lengths = {mode: statistics.median(s.tokens for s in streams[figure, mode]) for mode in MODES}
        logger.info("%s: median tokens per answer %s", figure, lengths)


if __name__ == "__main__":
    main()
