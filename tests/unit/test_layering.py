"""The package's import graph, read from the source (function-level imports included): no cycle
between packages, and every import points down the layering

    errors/compat <- jsonfile <- model <- config <- parallel <- data <- interop <- checkpoints <- infer <- train
        <- eval/api <- cli <- the `python -m dsvl_jax.<command>` entry modules

(a package may import itself and anything below it, nothing beside or above it). Imports inside
functions of dsvl_jax modules are allowed only in cli/, where they keep `--help` and usage errors
fast (no jax import before the flags are checked)."""

import ast
import collections
import os
from pathlib import Path

import pytest

PKG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "dsvl_jax"
)
ENTRY_SHIMS = (
    "aot",
    "chat",
    "convert",
    "demo",
    "evaluate",
    "launch_local",
    "plot",
    "rehearse",
    "sweep",
)
LAYERS = (  # bottom to top; each entry: the units (package or top-level module names) of one layer
    ("errors", "compat", "__init__"),
    ("jsonfile",),
    ("model",),
    ("config",),
    ("parallel",),
    ("data",),
    ("interop",),
    ("checkpoints",),
    ("infer",),
    ("train",),
    ("eval", "api"),
    ("cli",),
    ("entry",),
)
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, str]:
    """dotted module name -> file path, for every module of the package."""
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PKG))[:-3]
                out[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(root, f)
    return out


def unit_of(module: str) -> str:
    """The layering unit of a dotted module name: its first component below dsvl_jax, or 'entry'."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    if parts[-1] == "__main__" or (len(parts) == 2 and parts[1] in ENTRY_SHIMS):
        return "entry"
    return parts[1]


def _imports(path: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported dsvl_jax module, line, inside a function) for every import statement of a file."""
    tree = ast.parse(Path(path).read_text(), path)
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function |= {id(n) for n in ast.walk(fn) if n is not fn}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from dsvl_jax.x import y` imports the submodule dsvl_jax.x.y when there is one
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(
                f"{path}:{node.lineno}: relative import; write the dsvl_jax.... path"
            )
        out += [
            (n, node.lineno, id(node) in in_function)
            for n in names
            if n.split(".")[0] == "dsvl_jax"
        ]
    return sorted(set(out))


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    edges = []  # (from module, to module, line, in function)
    for mod, path in mods.items():
        for target, line, in_fn in _imports(path, set(mods)):
            assert target in mods, (
                f"{path}:{line}: imports {target}, which is not a module of the package"
            )
            edges.append((mod, target, line, in_fn))
    return mods, edges


def test_every_module_has_a_layer(graph):
    mods, _ = graph
    unplaced = sorted(m for m in mods if unit_of(m) not in RANK)
    assert not unplaced, f"modules outside the layering (add their package to LAYERS): {unplaced}"


def test_imports_point_down_the_layers(graph):
    mods, edges = graph
    wrong = [
        f"{mods[a]}:{line}: {a} ({unit_of(a)}) imports {b} ({unit_of(b)})"
        for a, b, line, _ in edges
        if unit_of(a) != unit_of(b) and RANK[unit_of(b)] >= RANK[unit_of(a)]
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_cycle_between_packages(graph):
    _, edges = graph
    succ = collections.defaultdict(set)
    for a, b, _, _ in edges:
        if unit_of(a) != unit_of(b):
            succ[unit_of(a)].add(unit_of(b))
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(succ[u]):
            if state.get(v) == "open":
                raise AssertionError("package cycle: " + " -> ".join(stack[stack.index(v) :] + [v]))
            if v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(succ):
        if u not in state:
            visit(u)


def test_function_level_imports_only_in_cli(graph):
    mods, edges = graph
    hidden = [
        f"{mods[a]}:{line}: imports {b} inside a function"
        for a, b, line, in_fn in edges
        if in_fn and unit_of(a) != "cli"
    ]
    assert not hidden, "imports hidden in functions (import at module level):\n" + "\n".join(hidden)


def test_the_checker_catches_a_violation(tmp_path):
    """The rules above fail on a planted upward import and a planted cycle."""
    assert RANK[unit_of("dsvl_jax.model.vlm")] < RANK[unit_of("dsvl_jax.train.loop")]
    assert unit_of("dsvl_jax.train.__main__") == unit_of("dsvl_jax.chat") == "entry"
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dsvl_jax.train import loop\n")
    ((imported, line, in_fn),) = _imports(str(bad), {"dsvl_jax.train", "dsvl_jax.train.loop"})
    assert (imported, line, in_fn) == ("dsvl_jax.train.loop", 2, True)
    assert RANK[unit_of(imported)] > RANK[unit_of("dsvl_jax.model.bad")]  # would be reported upward
