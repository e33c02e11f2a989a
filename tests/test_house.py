"""House rules a newcomer relies on: no function in src/ is longer than a screenful or two, and every module file
has its row in docs/architecture.md's module table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "vicreg"
MAX_FUNCTION_LINES = 120


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function and method under ``root``, decorators excluded."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                rows.append((lines, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


def test_function_lengths_counts_a_known_function(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    x = 1\n    return x\n\n\nclass A:\n    def g(self):\n        pass\n")
    assert function_lengths(tmp_path) == [(3, f"{tmp_path.name}/m.py:1 f"), (2, f"{tmp_path.name}/m.py:7 g")]


def test_no_function_in_src_is_over_120_lines() -> None:
    rows = function_lengths(SRC)
    longest = "\n".join(f"  {n:4d} {where}" for n, where in rows[:5])
    print(f"the longest functions in src/:\n{longest}")
    over = [f"{where} ({n} lines)" for n, where in rows if n > MAX_FUNCTION_LINES]
    assert not over, f"split these into named steps (at most {MAX_FUNCTION_LINES} lines each): {over}"


def module_table(text: str) -> dict[str, int]:
    """How many rows of the '## Modules' table name each module file in their first cell (`name.py`, `pkg/`)."""
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    counts: dict[str, int] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for name in set(re.findall(r"`([^`]+)`", line.split("|")[1])):
            path = name + "__init__.py" if name.endswith("/") else name
            counts[path] = counts.get(path, 0) + 1
    return counts


def test_every_module_file_has_one_row_in_the_architecture_page() -> None:
    table = module_table((REPO / "docs" / "architecture.md").read_text())
    modules = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    missing = sorted(modules - table.keys())
    assert not missing, f"docs/architecture.md's module table does not name: {missing}"
    twice = sorted(m for m in modules if table[m] > 1)
    assert not twice, f"docs/architecture.md's module table names these in more than one row: {twice}"
    gone = sorted(name for name in table if name.endswith(".py") and name not in modules)
    assert not gone, f"docs/architecture.md's module table names modules that do not exist: {gone}"


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/helpers.py (and tests/conftest.py's fixtures), never in a test module."""
    tests = REPO / "tests"
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(tests)} imports {m}" for m in modules if ".test_" in f".{m}"]
    assert not found, found
