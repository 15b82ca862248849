"""Benchmark: what relaying through a peer (config server.peers) costs a client.

Starts a server that owns SmolLM2 and a second one with no models whose peer it is, then goes
round the two for single streams (median of the runs: time to first token of a new prompt and
tokens/s after it) and for 4 concurrent clients, so the machine's drift hits both alike. Prints
each figure direct and relayed, and the ratio relayed / direct.

    .venv/bin/python -m bench.peers [--runs 9]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics

from bench import client
from bench.servers import llamasite
from inference.management.commands.install_default_model import bundled_default_model

logger = logging.getLogger("bench.peers")
SETTINGS = {"n_ctx": 4096, "parallel": 4}


def single_stream(url: str, model: str, run: int) -> client.Stream:
    return asyncio.run(client.stream_chat(url, model, prompt=client.fresh_prompt(run)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model_path = bundled_default_model()
    with (
        llamasite(model_path, SETTINGS) as owner,
        llamasite(model_path, SETTINGS, server={"peers": [owner.url]}, with_model=False) as relay,
    ):
        routes = {"direct": owner.url, "relayed": relay.url}
        for url in routes.values():
            single_stream(url, owner.model, -1)  # warm-up: the load, the connection
        streams: dict[str, list[client.Stream]] = {name: [] for name in routes}
        for run in range(runs):
            for name, url in routes.items() if run % 2 == 0 else reversed(routes.items()):
                streams[name].append(single_stream(url, owner.model, run * 2 + (name == "relayed")))
        concurrent = {
            name: asyncio.run(client.concurrent_streams(url, owner.model, clients=4, requests=4, health_path=None))
            for name, url in routes.items()
        }
    figures = {
        name: {
            "ttft_ms": statistics.median(s.ttft_s or 0.0 for s in streams[name]) * 1000,
            "tokens_per_s": statistics.median(s.decode_tokens_per_s for s in streams[name]),
            "aggregate_tokens_per_s_4_clients": concurrent[name].figures()["aggregate_tokens_per_s"],
        }
        for name in routes
    }
    logger.info("%-34s %10s %10s %8s", "", "direct", "relayed", "ratio")
    for figure in figures["direct"]:
        direct, relayed = figures["direct"][figure], figures["relayed"][figure]
        logger.info("%-34s %10.1f %10.1f %7.2fx", figure, direct, relayed, relayed / direct)


if __name__ == "__main__":
    main()
