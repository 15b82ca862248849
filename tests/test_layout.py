"""The code's layout, as docs/architecture.md draws it: layers whose imports run one way (down),
few modules loose at the top of `inference/`, and no module or class too big to read.

Read from the source (ast), so a refactor that climbs back up a layer fails here at once."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# From the bottom up: a module may import from its own layer and the ones below, never above.
LAYERS = [
    (
        "base",
        ["inference.cpus", "inference.config", "inference.errors", "inference.histograms", "inference.secret_files"],
    ),
    ("connections", ["inference.connections"]),
    ("engine", ["inference.runtime", "inference.grammar", "inference.templates", "inference.pulling"]),
    ("database", ["inference.models"]),
    ("access", ["inference.access"]),
    ("protocol", ["inference.protocol"]),
    ("records", ["inference.records"]),
    ("use cases", ["inference.services", "inference.selectors"]),
    ("serving", ["inference.serving"]),
    ("api", ["inference.api"]),
    ("shell", ["inference.admin", "inference.apps", "inference.management", "dashboard", "llamasite"]),
]
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 240  # "about 200": the runtime's pool, worker and scheduler run a little over
MAX_TOP_LEVEL_MODULES = 10


def layer_of(module: str) -> tuple[int, str] | None:
    """The layer (its rank, and the package that placed it there) of a module; the longest
    matching package wins (`inference.management` is not `inference.models`)."""
    found = None
    for rank, (_, packages) in enumerate(LAYERS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and (
                found is None or len(package) > len(found[1])
            ):
                found = (rank, package)
    return found


def sources() -> Iterator[tuple[str, Path]]:
    for top in ("inference", "dashboard", "llamasite"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "migrations" not in path.parts and path.relative_to(ROOT).parts != ("inference", "__init__.py"):
                yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from inference.api import views` imports inference.api.views.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_imports_run_down_the_layers_only() -> None:
    climbs = []
    for module, path in sources():
        here = layer_of(module)
        assert here is not None, f"{module} has no layer: add its package to LAYERS (and the docs)"
        for name in imports(path):
            there = layer_of(name)
            if there is not None and there[0] > here[0]:
                climbs.append(f"{module} imports {name} ({LAYERS[there[0]][0]} is above {LAYERS[here[0]][0]})")
    assert not climbs, "\n".join(climbs)


def test_inference_has_few_loose_modules() -> None:
    loose = sorted(path.name for path in (ROOT / "inference").glob("*.py"))
    assert len(loose) <= MAX_TOP_LEVEL_MODULES, loose


@pytest.mark.parametrize("module, path", list(sources()), ids=lambda value: str(value))
def test_modules_and_classes_stay_readable(module: str, path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{module} has {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{module}.{node.name} has {length} lines"
