"""The package's layering, read from its import statements (no import is executed): the library
never imports the training harness, and the module graph has no cycle, so that a run reads
top-down (settings → data → trainer → evaluation → report) without a module calling back into
one that called it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pathgrad_ref"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").exists() or (
        PACKAGE.parent / rel / "__init__.py"
    ).exists()


def is_leaf(name: str) -> bool:
    """A module proper, not a package."""
    return not (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").exists()


def imports(path: Path) -> set[str]:
    """The ``pathgrad_ref`` modules that ``path`` imports, at any depth of its code (a lazy
    import inside a function counts: it is a dependency all the same)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pathgrad_ref"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pathgrad_ref":
                continue
            # ``from . import files`` names a module; ``from .config import X`` an attribute.
            subs = {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
            found |= subs or {target}
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_graph_is_read() -> None:
    """The reader resolves the forms the package uses (a check of the checker)."""
    g = graph()
    assert "pathgrad_ref.training.files" in g["pathgrad_ref.training.trainer"]  # from . import
    assert "pathgrad_ref.training.config" in g["pathgrad_ref.training.trainer"]  # from .config
    assert "pathgrad_ref.evaluation" in g["pathgrad_ref.training.trainer"]  # from ..evaluation
    assert "pathgrad_ref.training" not in g["pathgrad_ref.training.trainer"]


def test_the_library_never_imports_the_training_harness() -> None:
    offenders = {
        module: sorted(d for d in deps if d.startswith("pathgrad_ref.training"))
        for module, deps in graph().items()
        if not module.startswith("pathgrad_ref.training")
    }
    assert not {m: d for m, d in offenders.items() if d}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``g`` as a list of modules (first = last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def leaf_graph() -> dict[str, set[str]]:
    """The graph between modules proper: an import of a package (``from ..estimators import
    get_estimator``) stands for an import of every module its ``__init__`` imports, as far
    down as they go (over-counting a dependency can only add cycles, never hide one)."""
    g = graph()

    def expand(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if is_leaf(name) or name in seen:
            return {name} if is_leaf(name) else set()
        return set().union(*(expand(d, seen | {name}) for d in g[name]))

    return {m: set().union(*(expand(d) for d in deps)) for m, deps in g.items() if is_leaf(m)}


@pytest.mark.parametrize("scope", ["pathgrad_ref.training", "pathgrad_ref"])
def test_no_module_imports_one_that_imports_it(scope: str) -> None:
    g = {m: {d for d in deps if d.startswith(scope)} for m, deps in leaf_graph().items()}
    g = {m: deps for m, deps in g.items() if m.startswith(scope)}
    cycle = find_cycle(g)
    assert cycle is None, " → ".join(cycle or [])
