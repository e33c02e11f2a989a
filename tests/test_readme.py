"""The README's examples run and the public names it mentions exist.

Every ```python block of README.md runs, each in a fresh namespace in an empty folder, with the network closed,
unless its first line says what it needs (``# needs: ...``). A block that needs ``a run folder`` runs in a folder
holding one (``runs/fm``, a copy of the session's tiny image run, and ``backbone.pt`` exported from it); any other
block that needs something is not run, but every call it makes of a ``vicreg`` name is checked against that
name's signature. Every ``vicreg.X`` the
README names must import or be an attribute of what does.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shutil
import socket
import warnings
from pathlib import Path

import pytest

from tests.helpers import REPO, TinyRuns, run_cli

README = (REPO / "README.md").read_text()
RUN_FOLDER = "# needs: a run folder"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def needs(source: str) -> str:
    first = source.splitlines()[0] if source.strip() else ""
    return first.removeprefix("# needs:").strip() if first.startswith("# needs:") else ""


def resolve(name: str) -> object:
    """The object a dotted ``vicreg.X.Y`` names: the longest importable module, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def vicreg_names(tree: ast.AST) -> dict[str, str]:
    """What a block calls by a name it imported from vicreg: {local name: dotted name}."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vicreg":
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            names.update({a.asname or a.name: a.name for a in node.names if a.name.split(".")[0] == "vicreg"})
    return names


def bad_calls(source: str) -> list[str]:
    """Calls of vicreg functions and classes whose arguments their signature does not accept (or that do not
    exist): the check a block that cannot run still gets."""
    tree = ast.parse(source)
    names = vicreg_names(tree)
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        dotted = ast.unparse(node.func)
        head, _, rest = dotted.partition(".")
        if head not in names or any(isinstance(a, ast.Starred) for a in node.args):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                target = resolve(f"{names[head]}.{rest}" if rest else names[head])
            inspect.signature(target).bind(*node.args, **{k.arg: k.value for k in node.keywords if k.arg})
        except (ImportError, AttributeError, TypeError) as err:
            bad.append(f"{ast.unparse(node)}: {err}")
    return bad


BLOCKS = python_blocks(README)


def test_the_readme_has_python_blocks_and_they_parse() -> None:
    assert len(BLOCKS) >= 5
    for line, source in BLOCKS:
        compile(source, f"README.md:{line}", "exec")


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_a_readme_block_runs(
    line: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    assert not bad_calls(source), f"README.md:{line}: {bad_calls(source)}"  # run or not, its vicreg calls fit
    needed = needs(source)
    if needed and not source.startswith(RUN_FOLDER):
        pytest.skip(f"README.md:{line} needs {needed}")
    if source.startswith(RUN_FOLDER):
        runs: TinyRuns = request.getfixturevalue("tiny_runs")
        (tmp_path / "runs").mkdir()
        shutil.copytree(runs.path("image"), tmp_path / "runs" / "fm")
        assert run_cli("export", tmp_path / "runs" / "fm", "--out", tmp_path / "backbone.pt").returncode == 0
    monkeypatch.chdir(tmp_path)

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError(f"README.md:{line} reached for the network; mark the block '# needs: the network'")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    exec(compile(source, f"README.md:{line}", "exec"), {"__name__": "readme"})


def test_bad_calls_finds_wrong_arguments_and_missing_names() -> None:
    assert bad_calls("from vicreg import vicreg_loss\nvicreg_loss(a, b, sim_coeff=2.0)") == []
    assert len(bad_calls("from vicreg import vicreg_loss\nvicreg_loss(a, b, nope=1)")) == 1
    assert len(bad_calls("import vicreg\nvicreg.no_such_function(1)")) == 1
    assert bad_calls("import vicreg\nvicreg.load_backbone('x')\nother(1)") == []


def test_every_public_name_the_readme_mentions_exists() -> None:
    names = sorted(set(re.findall(r"(?<![\w/.-])vicreg(?:\.[A-Za-z_]\w*)+", README)))
    assert "vicreg.load_backbone" in names
    missing = []
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                resolve(name)
        except (ImportError, AttributeError) as err:
            missing.append(f"{name} ({err})")
    assert not missing, f"README.md names what does not exist: {missing}"
