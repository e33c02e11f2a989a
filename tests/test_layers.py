"""The package's import graph: no cycles, and every import points down the layers of docs/architecture.md.

leaves (loss, optim, models, encoders, augment, data, distributed, diagnostics, checkpoint, probes, monitors, plots,
runlog, export, weights) <- config <- build (the vicreg.build package) <- runs (train, eval, embed, report,
neighbors) <- cli. A run never imports another run; only the CLI imports ``train``. Imports inside functions are
allowed only for optional dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vicreg"

RUNS = {"vicreg.train", "vicreg.eval", "vicreg.embed", "vicreg.report", "vicreg.neighbors", "vicreg.tune"}
# vicreg.__init__ is the public API: it re-exports from every layer below the CLI (load_backbone from vicreg.backbone)
LAYER = {
    "vicreg.__init__": 4,
    "vicreg.config": 1,
    "vicreg.build": 2,
    "vicreg.backbone": 3,
    "vicreg.cli": 4,
    "vicreg.__main__": 5,
}
PACKAGES = {"vicreg.build": 2}
"""Packages whose every module sits on the package's layer."""
OPTIONAL = {
    "timm",
    "aeon",
    "sklearn",
    "pyarrow",
    "umap",
    "datasets",
    "huggingface_hub",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "tifffile",
    "pydicom",
    "optuna",
    "mlflow",
    "wandb",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer(module: str) -> int:
    if module in LAYER:
        return LAYER[module]
    for package, layer in PACKAGES.items():
        if module.startswith(package + "."):
            return layer
    if module in RUNS:
        return 3
    return 0  # a leaf


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """Top-level vicreg imports, and (line, module) of every import inside a function."""
    tree = ast.parse(path.read_text())
    top: list[str] = []
    inner: list[tuple[int, str]] = []

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            # `from package import module` depends on the module; `from module import name` on the module
            return [s for s in subs if _is_module(s)] or [node.module]
        return []

    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        top += [n for n in names(node) if n.startswith("vicreg")]
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                for n in names(node):
                    inner.append((node.lineno, n))
    return top, inner


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(path)[0]:
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


def test_imports_point_down_the_layers() -> None:
    bad = []
    for module, deps in _graph().items():
        for dep in deps:
            if dep == "vicreg.__init__" or dep == "vicreg":
                continue
            if _layer(dep) > _layer(module):
                bad.append(f"{module} (layer {_layer(module)}) imports {dep} (layer {_layer(dep)})")
            if dep in RUNS and module in RUNS:
                bad.append(f"{module} imports {dep}: a run never imports another run (share through vicreg.build)")
            if dep == "vicreg.train" and module != "vicreg.cli":
                bad.append(f"{module} imports vicreg.train; only the CLI does")
    assert not bad, "\n".join(sorted(set(bad)))


def test_config_imports_only_leaves() -> None:
    deps = _graph()["vicreg.config"]
    assert all(_layer(d) == 0 for d in deps), deps


def test_imports_inside_functions_are_optional_dependencies_only() -> None:
    bad = []
    for path in _modules().values():
        for line, imported in _imports(path)[1]:
            if imported.split(".")[0] not in OPTIONAL:
                bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {imported} inside a function")
    assert not bad, "\n".join(sorted(set(bad)))


def test_the_layer_map_knows_every_upper_module() -> None:
    """A new module above the leaves must be placed in the map, not silently counted as a leaf."""
    for name, path in _modules().items():
        if _layer(name) == 0 and name != "vicreg.__init__":
            top = _imports(path)[0]
            assert not any(t.startswith(("vicreg.build", "vicreg.train", "vicreg.cli")) for t in top), name
