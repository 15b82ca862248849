"""The console's pages, in the order every page's navigation and the admin's home list them."""

from __future__ import annotations

from typing import NamedTuple


class ConsolePage(NamedTuple):
    title: str
    url_name: str  # in the dashboard's URLconf
    summary: str  # for the admin's home


CONSOLE_PAGES = (
    ConsolePage("Usage", "index", "Requests, tokens and speed over time; the live feed"),
    ConsolePage("Models", "models", "What is loaded, live: memory, slots, queue, today's use; load, unload, pin"),
    ConsolePage("Playground", "playground", "Chat with any model, as yourself"),
    ConsolePage("Pull models", "pull", "Download a GGUF into the models directory, with progress"),
)
