"""The package's layering, as docs/architecture.md draws it: every import between two parts
of ntq points down, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Each part of ntq and its height: a part may import only parts lower than itself (and
# itself). The building blocks at the bottom import nothing of ntq but each other's lower ones.
RANKS = {
    "records": 0,
    "config": 0,
    "logs": 0,
    "green": 0,
    "signing": 0,
    "backoff": 0,
    "serialize": 1,
    "urlsafety": 1,
    "store": 2,
    "embedded": 2,
    "metrics": 3,
    "notify": 4,
    "delivery": 4,
    "worker": 5,
    "requeue": 5,
    "web": 6,
    "bench": 7,
    "cli": 8,
    "__main__": 9,
    "__init__": 0,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Iterator[str]:
    """Every ntq module ``path`` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("ntq."))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ntq"):
            assert node.level == 0, f"{path}: relative import"
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def resolve(name: str, modules: set[str]) -> str:
    """The module ``name`` refers to (``ntq.store.db.make_engine`` -> ``ntq.store.db``)."""
    while name not in modules:
        name = name.rsplit(".", 1)[0]
    return name


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in SRC.glob("ntq/**/*.py")}
    return {
        module: {resolve(name, set(paths)) for name in imported(path)} - {module}
        for module, path in paths.items()
    }


def test_every_part_has_a_rank() -> None:
    assert {part(module) for module in graph()} <= set(RANKS)


@pytest.mark.parametrize(("module", "targets"), sorted(graph().items()))
def test_imports_point_down(module: str, targets: set[str]) -> None:
    upward = {
        target
        for target in targets
        if part(target) != part(module) and RANKS[part(target)] >= RANKS[part(module)]
    }
    assert not upward, f"{module} imports {sorted(upward)} from its own level or above"


def test_no_import_cycles() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path[path.index(module) :], module))
        if module not in done:
            for target in edges[module]:
                visit(target, (*path, module))
            done.add(module)

    for module in edges:
        visit(module, ())
