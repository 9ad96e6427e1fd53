"""The package's shape: no import cycle, and every import points down the README's module table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "harness"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            inside |= {id(n) for n in ast.walk(node)}
    return inside


def _owner(name: str) -> str | None:
    """The harness module a dotted import name refers to (`harness.data.DATASETS` -> `harness.data`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Harness modules `module` imports, at module level or inside functions (lazy imports count:
    they are dependencies all the same), but not under TYPE_CHECKING."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            # `from harness import reports` imports harness.reports; `from harness.x import f` imports harness.x.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                     for alias in node.names]
        else:
            continue
        found |= {owner for n in names if n.startswith("harness") and (owner := _owner(n)) and owner != module}
    return found


def _is_package_member(importer: str, imported: str) -> bool:
    """A package's `__init__` loading one of its own modules: how its registry fills itself."""
    return MODULES[importer].name == "__init__.py" and imported.startswith(importer + ".")


def test_no_import_cycle() -> None:
    graph = {m: {i for i in imports_of(m) if not _is_package_member(m, i)} for m in MODULES}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycle = visiting[visiting.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def readme_layers() -> dict[str, int]:
    """Row index (0 = top) of every `harness/...` path in README's "What is where" table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("## What is where"):].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    rows = [line for line in table.splitlines() if line.startswith("| `harness/")]
    for row, line in enumerate(rows):
        for path in re.findall(r"`(harness/[^`]*)`", line.split("|")[1]):
            layers[path.rstrip("/")] = row
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int:
    """The row of `module`: its own file's, else its package folder's (`harness/data/...` -> `harness/data`)."""
    path = str(MODULES[module].relative_to(REPO))
    candidates = [path] + [str(p.relative_to(REPO)) for p in MODULES[module].parents
                           if p != REPO and PACKAGE in (p, *p.parents)]
    for candidate in candidates:
        if candidate in layers:
            return layers[candidate]
    raise AssertionError(f"{path} is not in README's 'What is where' table; add it to the row it belongs to")


def test_every_module_is_in_the_readme_table_and_imports_only_downwards() -> None:
    layers = readme_layers()
    assert layers, "README has no 'What is where' table"
    wrong = [f"{m} (row {layer_of(m, layers)}) imports {i} (row {layer_of(i, layers)})"
             for m in sorted(MODULES) for i in sorted(imports_of(m))
             if layer_of(i, layers) < layer_of(m, layers)]
    assert not wrong, "imports pointing up README's module table:\n" + "\n".join(wrong)


def test_the_checks_see_lazy_imports_and_skip_type_checking_ones() -> None:
    """The walker itself: a lazy import counts, an annotation-only one does not."""
    assert "harness.comparison" in imports_of("harness.runner")  # imported inside a function
    assert "harness.tracking" not in imports_of("harness.reports")
    assert "harness.tracking" in imports_of("harness.lifecycle")
