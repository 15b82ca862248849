"""The documentation keeps up with the code: every config key and every API route is documented,
every relative link in README.md and docs/*.md resolves, and the README opens with its commands.

In-process and fast: no server, no model. Config keys come from inference.config's tables and
routes from Django's URL resolver, so neither is listed here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from inference import config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

# Django's own admin and the console's pages are not API routes.
SKIPPED_INCLUDES = ("admin/", "dashboard/")


def config_keys() -> list[str]:
    """Every key config.json accepts, as `section.key`: read from inference.config's tables."""
    return [f"{section}.{key}" for section, keys in config.SCHEMA.items() for key in keys]


def api_routes() -> list[str]:
    """Every route the URL resolver serves outside the Django admin and the console, as
    `/v1/models/{model_id}`."""

    def walk(patterns: list, prefix: str) -> Iterator[str]:
        for entry in patterns:
            route = prefix + str(entry.pattern).lstrip("^").rstrip("$")
            if isinstance(entry, URLResolver):
                if route not in SKIPPED_INCLUDES:
                    yield from walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern):
                yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)

    return list(dict.fromkeys(walk(get_resolver().url_patterns, "")))


def read(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def without_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links and headings there are
    not markdown's)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"(`+)(?:(?!\n\n).)+?\1", "", text, flags=re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped except '-' and
    '_', each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    fenced = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", read(page), flags=re.MULTILINE | re.DOTALL)
    for match in re.finditer(r"^#{1,6} +(.+?) *#* *$", fenced, flags=re.MULTILINE):
        base = slug(match.group(1))
        anchor, n = base, 0
        while anchor in found:  # GitHub numbers repeated headings: x, x-1, x-2
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def links(page: Path) -> list[str]:
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", without_code(read(page)))


def test_every_config_key_is_documented() -> None:
    page = read(DOCS / "configuration.md")
    keys = config_keys()
    assert "server.port" in keys
    missing = [key for key in keys if f"`{key}`" not in page]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_every_api_route_is_documented() -> None:
    api = read(DOCS / "api.md")
    operations = read(DOCS / "operations.md")
    routes = api_routes()
    assert {"/health", "/v1/chat/completions"} <= set(routes), routes
    missing = []
    for route in routes:
        documented = re.compile(r"(?<![\w./{}-])" + re.escape(route) + r"(?![\w/{}-])")
        pages = [api, operations] if route.startswith("/admin/") or route == "/metrics" else [api]
        if not any(documented.search(text) for text in pages):
            missing.append(route)
    assert not missing, f"docs/api.md does not document {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, flags=re.IGNORECASE):  # http:, https:, mailto:
            continue
        target, _, anchor = unquote(link).partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists() or ROOT not in (path, *path.parents):
            broken.append(f"{link} (no such file)")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{link} (no heading #{anchor} in {path.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_opens_with_its_commands() -> None:
    lines = read(README).splitlines()
    assert lines[0] == "# llamasite"
    first = lines[1:8]
    assert any(line.startswith("make serve") for line in first), first
    assert any(line.startswith("make test ") for line in first), first
