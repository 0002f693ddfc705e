"""The package's layout rules, read from its source: imports go one way, none are hidden.

Between modules and between floors: each sub-package folder (`weights`, `data`, `training`,
...) is one node and each root-level module (`models.py`, `network.py`, ...) another, and the
module-level imports between these nodes form no loop.
"""

from __future__ import annotations

import ast
import pathlib

from conftest import LONGEST_FIRST

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_vgg"
# The command line imports the library inside each command, so `kvgg --version` and
# `--help` start without Keras: not a hidden cycle.
LAZY_BY_DESIGN = {"keras_vgg.cli"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _targets(node: ast.AST, module: str, modules) -> list[str]:
    """The package modules an import statement loads (a package's `__init__` included)."""
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    out = []
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in modules and prefix != "keras_vgg" and prefix != module:
                out.append(prefix)
    return out


def _imports(modules):
    """(module-level edges, function-level package imports) of every module."""
    edges, hidden = {}, []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        edges[module] = set()
        for node in tree.body:
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports never run
                continue
            for inner in ast.walk(node) if not isinstance(node, ast.FunctionDef) else ():
                edges[module].update(_targets(inner, module, modules))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if _targets(inner, module, modules):
                        hidden.append(f"{module}:{inner.lineno}")
    return edges, hidden


def _cycle(edges) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _node(module: str) -> str:
    """A module's node in the graph between folders: its sub-package, or itself at the root."""
    return ".".join(module.split(".")[:2])


def _folder_edges(edges) -> dict[str, set[str]]:
    """Module-level edges between nodes (`_node`), an import inside a node left out."""
    out: dict[str, set[str]] = {}
    for module, targets in edges.items():
        node = _node(module)
        out.setdefault(node, set()).update(_node(t) for t in targets if _node(t) != node)
    return out


def test_module_level_imports_have_no_cycle():
    edges, _ = _imports(_modules())
    # A package's own __init__ re-exporting its submodules is not a cycle with them.
    edges = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in edges.items()}
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_folders_and_root_modules_import_one_way():
    edges, _ = _imports(_modules())
    loop = _cycle(_folder_edges(edges))
    if loop:
        hops = []
        for a, b in zip(loop, loop[1:], strict=False):
            by = sorted(m for m in edges if _node(m) == a and b in map(_node, edges[m]))
            hops.append(f"{a} -> {b} ({', '.join(by)})")
        raise AssertionError("a loop between folders: " + "; ".join(hops))


def test_no_function_level_package_import_hides_a_cycle():
    _, hidden = _imports(_modules())
    hidden = [h for h in hidden if h.split(":")[0] not in LAZY_BY_DESIGN]
    assert hidden == []


def test_the_checks_see_a_cycle_and_a_hidden_import():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    tree = {"keras_vgg.x": None, "keras_vgg.y": None}
    node = ast.parse("from keras_vgg import y").body[0]
    assert _targets(node, "keras_vgg.x", tree) == ["keras_vgg.y"]


def test_the_folder_check_sees_a_loop_no_module_cycle_shows():
    # a.x imports b.y, b.z imports a.w: no module imports itself back, the folders do.
    edges = {
        "keras_vgg.a.x": {"keras_vgg.b.y"},
        "keras_vgg.a.w": set(),
        "keras_vgg.b.y": set(),
        "keras_vgg.b.z": {"keras_vgg.a.w"},
        "keras_vgg.c": {"keras_vgg.a.x", "keras_vgg.a"},
    }
    assert _cycle(edges) is None
    folders = _folder_edges(edges)
    assert folders == {
        "keras_vgg.a": {"keras_vgg.b"},
        "keras_vgg.b": {"keras_vgg.a"},
        "keras_vgg.c": {"keras_vgg.a"},
    }
    assert _cycle(folders) == ["keras_vgg.a", "keras_vgg.b", "keras_vgg.a"]
    del edges["keras_vgg.b.z"]
    assert _cycle(_folder_edges(edges)) is None


def test_longest_first_names_test_files_that_exist():
    tests = pathlib.Path(__file__).parent
    assert [name for name in LONGEST_FIRST if not (tests / name).is_file()] == []
