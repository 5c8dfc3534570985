"""The library's layering rules, checked on its source (no imports run).

1. Nothing imports ``cli`` (only ``__main__``, the entry point).
2. Nothing below the trainer imports ``train``: only the commands above it may.
3. No import cycle, counting imports inside functions.
4. No module imports another module's ``_private`` name.

Every ``import``/``from ... import`` statement counts, wherever it is
(module level, functions, ``TYPE_CHECKING`` blocks). A private module inside
a package (``data/_raster.py``) may be imported by its own package.
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "feratt_jax"

# The commands built on the trainer, and the entry points; nothing else may import train.
ABOVE_TRAIN = {"cli", "__main__", "evaluate", "represent", "predict", "kfold", "bench"}


def module_names(package: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name (package-relative, "" for the package itself) -> file."""
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(dotted: str, modules: dict[str, pathlib.Path]) -> str:
    """The longest known module that ``dotted`` (package-relative) names or lies in."""
    while dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted


def imports(package: pathlib.Path) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of ``package`` (package-relative names) and the private-name imports found."""
    root = package.name
    modules = module_names(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, path in modules.items():
        is_init = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == root or alias.name.startswith(root + "."):
                        graph[name].add(_resolve(alias.name[len(root) + 1 :], modules))
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importing module's package
                    base = name.split(".") if is_init else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([p for p in base if p] + ([node.module] if node.module else []))
                elif node.module == root or (node.module or "").startswith(root + "."):
                    target = node.module[len(root) + 1 :]
                else:
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}" if target else alias.name
                    owner = full if full in modules else _resolve(target, modules)
                    graph[name].add(owner)
                    if not alias.name.startswith("_") or alias.name.startswith("__"):
                        continue
                    # A private submodule is its own package's business.
                    if full in modules and (not target or name.startswith(target + ".")):
                        continue
                    private.append(f"{name} imports {alias.name} from {target or root}")
    for name in graph:
        graph[name].discard(name)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(package: pathlib.Path, above_train: set[str] = ABOVE_TRAIN) -> list[str]:
    """Every broken rule, one line each (empty when the package keeps all four)."""
    graph, private = imports(package)
    found = []
    for name, targets in sorted(graph.items()):
        if "cli" in targets and name != "__main__":
            found.append(f"{name} imports cli")
        if "train" in targets and name not in above_train:
            found.append(f"{name} imports train from below it")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    found += private
    return found


def test_the_library_keeps_the_four_rules():
    assert violations(PACKAGE) == []


def _fake_package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    package = tmp_path / "feratt_jax"
    for rel, text in {"__init__.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


CLEAN = {
    "cli.py": "def main():\n    from feratt_jax import train\n",
    "__main__.py": "from feratt_jax.cli import main\n",
    "train.py": "from feratt_jax import step\n",
    "step.py": "import numpy\n",
    "data/__init__.py": "",
    "data/_raster.py": "",
    "data/render.py": "from feratt_jax.data import _raster\n",
}


def test_a_clean_fake_package_passes(tmp_path):
    assert violations(_fake_package(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"step.py": "def f():\n    from feratt_jax.cli import main\n"}, "step imports cli"),
        ({"step.py": "def f():\n    import feratt_jax.train\n"}, "step imports train from below it"),
        ({"step.py": "def f():\n    from feratt_jax import train\n"}, "import cycle: step -> train"),
        ({"step.py": "from .train import x\n"}, "import cycle: step -> train"),
        ({"step.py": "from feratt_jax.train import _helper\n"}, "step imports _helper from train"),
        ({"models.py": "from feratt_jax.data import _raster\n"}, "models imports _raster from data"),
    ],
)
def test_each_rule_catches_a_violation(tmp_path, extra, message):
    found = violations(_fake_package(tmp_path, {**CLEAN, **extra}))
    assert any(message in line for line in found), found
