"""The package keeps the shape of its pipeline: small modules and functions, thin commands, no cycles.

Read from the source with :mod:`ast` (nothing is imported), so these checks cost nothing and name
the offending module or function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dcd_deploy"
CLI = ROOT / "cli"

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
MAX_COMMAND_LINES = 40
MAX_TOP_LEVEL_MODULES = 8


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``import``/``from`` statement inside ``module`` refers to."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{alias.name}" for alias in node.names] + [target]


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # function-level imports count too
            if isinstance(node, ast.ImportFrom):
                candidates = _resolve(name, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                # `from .x import y` names module x.y if it exists, else module x
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name and not name.startswith(candidate + "."):
                    graph[name].add(candidate)
    return graph


def test_no_module_is_over_the_line_limit():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_the_line_limit():
    long = []
    for name, path in _modules().items():
        for node, n in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            if n > MAX_FUNCTION_LINES:
                long.append(f"{name}.{node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_commands_are_thin():
    long = []
    for path in sorted((CLI / "commands").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "command":
                body = node.end_lineno - node.body[0].lineno + 1  # the body, without decorators and signature
                if body > MAX_COMMAND_LINES:
                    long.append(f"{path.name} ({body} lines)")
    assert not long, f"command functions over {MAX_COMMAND_LINES} lines: {long}"


def test_at_most_eight_modules_at_the_top_level():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_import_cycles():
    graph = _import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    """The checker must not be blind: a cycle through a function-level import is found."""
    source = "def f():\n    from .b import g\n"
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert "dcd_deploy.pkg.b" in _resolve("dcd_deploy.pkg.a", False, node)


# The pipeline's steps in data-path order: a module may import its own step and earlier ones only.
STEPS = ("zoo", "load", "lowering", "runtime", "exporting", "compare", "bench", "serve")


def _step(module: str) -> int | None:
    parts = module.split(".")
    return STEPS.index(parts[1]) if len(parts) > 1 and parts[1] in STEPS else None


def test_imports_flow_forward_along_the_pipeline():
    backward = [f"{a} -> {b}" for a, deps in sorted(_import_graph().items()) for b in sorted(deps)
                if _step(a) is not None and _step(b) is not None and _step(b) > _step(a)]
    assert not backward, f"imports against the pipeline's direction: {backward}"
