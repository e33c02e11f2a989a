"""Bad input through the command line: one line on stderr naming the culprit, exit status 1, no traceback.

The table of bad inputs runs in-process through ``cli.main`` (:func:`tests.helpers.run_cli`), which is what the
console script calls; one real process of the console script checks the same promise across the process
boundary. The boundary's decisions (expected or a bug, VICREG_DEBUG) are tested in-process below.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import vicreg.cli as cli
from tests.helpers import run_cli, subprocess_env
from vicreg.checkpoint import CheckpointError
from vicreg.cli import describe_error, is_expected, main
from vicreg.config import TrainConfig

TINY = ["--device", "cpu", "--batch-size", "16", "--views.size", "16", "--model.backbone", "small_cnn"]
TINY += ["--model.width", "4", "--model.expander", "32-32", "--epochs", "1", "--no-progress"]


@contextlib.contextmanager
def _read_only_folder(path: Path) -> Iterator[Path | None]:
    """A folder nobody can write into: a read-only tmpfs as root (root ignores permissions), else mode 0o555."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | None]]:
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    np.savez(root / "tiny.npz", images=rng.integers(0, 255, (48, 1, 16, 16), dtype=np.uint8), labels=np.arange(48) % 2)
    (root / "empty").mkdir()
    (root / "emptyrun").mkdir()
    (root / "bad.npz").write_text("not an archive")
    (root / "bad.npy").write_text("not an array")
    (root / "fake.pt").write_bytes(b"\x89PNG\r\n\x1a\n not a checkpoint")
    (root / "unknown.yaml").write_text("epoch: 3\n")
    (root / "syntax.yaml").write_text("epochs: [\n")
    damaged = root / "damaged" / "checkpoints"
    damaged.mkdir(parents=True)
    (damaged / "last.pt").write_bytes(b"PK\x03\x04 cut short by hand")
    with _read_only_folder(root / "readonly") as readonly:
        yield {"root": root, "readonly": readonly}


def _cases(root: Path, readonly: Path | None) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, what the message must name)."""
    r = root
    tiny = ["--data", str(r / "tiny.npz"), *TINY]

    def train(data: str, out: str, *flags: str) -> list[str]:
        return ["train", "--data", str(r / data), "--out", str(r / out), *flags]

    ro_words = [str(readonly), "Read-only file system" if os.geteuid() == 0 else "Permission denied"]
    return {
        "missing data path": (train("nope", "o1", "--preset", "fashion-mnist-cpu"), ["nope"]),
        "empty data folder": (train("empty", "o2", *TINY), [str(r / "empty")]),
        "table npz not an archive": (
            train("bad.npz", "o3", "--modality", "table", "--device", "cpu", "--model.backbone", "mlp"),
            ["bad.npz"],
        ),
        "npy holding text": (train("bad.npy", "o4", *TINY), ["bad.npy", "not a .npy file", "text"]),
        "export of nothing": (["export", str(r / "nothing")], ["nothing"]),
        "damaged last.pt": (train("tiny.npz", "damaged", *TINY), ["last.pt", "no readable checkpoint"]),
        "unknown preset": (["train", "--preset", "nope-preset"], ["nope-preset", "fashion-mnist-cpu"]),
        "unknown key in a config file": (["train", "--config", str(r / "unknown.yaml")], ["'epoch'"]),
        "YAML syntax error": (["train", "--config", str(r / "syntax.yaml")], ["syntax.yaml", "not valid YAML"]),
        "negative learning rate": (["train", "--optim.base-lr", "-1"], ["optim.base_lr", "-1"]),
        "bad expander spec": (["train", "--model.expander", "8192-abc"], ["8192-abc"]),
        "batch size 1": (["train", "--batch-size", "1"], ["batch_size", "got 1"]),
        "batch larger than the data": (train("tiny.npz", "o5", *TINY, "--batch-size", "64"), ["64", "--batch-size"]),
        "negative budget": (["train", "--budget-minutes", "-2"], ["budget_minutes", "-2"]),
        "not a number": (["train", "--epochs", "many"], ["--epochs", "many"]),
        "eval without checkpoints": (["eval", str(r / "emptyrun")], ["emptyrun", "checkpoints"]),
        "export without checkpoints": (["export", str(r / "emptyrun")], ["emptyrun"]),
        "report without checkpoints": (["report", str(r / "emptyrun")], ["emptyrun"]),
        "embed without checkpoints": (["embed", str(r / "emptyrun"), "--out", str(r / "e.npy")], ["emptyrun"]),
        "a PNG named .pt": (["eval", str(r / "fake.pt")], ["fake.pt", "not a checkpoint"]),
        "eval with k 0": (["eval", str(r / "emptyrun"), "--k", "0"], ["k must be positive", "(0,)"]),
        "eval with a label fraction of 2": (["eval", str(r / "emptyrun"), "--fractions", "2"], ["(0, 1]", "2.0"]),
        "neighbors with k 0": (["neighbors", str(r / "emptyrun"), "--k", "0"], ["--k must be >= 1"]),
        "embed with batch size 0": (
            ["embed", str(r / "emptyrun"), "--out", str(r / "e.npy"), "--batch-size", "0"],
            ["batch_size", "got 0"],
        ),
        "read-only --out": (["train", "--out", str((readonly or r) / "run"), *tiny], ro_words),
    }


CASES = list(_cases(Path("/x"), Path("/x")))
DETAILED = {"damaged last.pt", "YAML syntax error"}
"""Messages whose first line names the problem and the fix, followed by the details (each damaged file; where
the YAML parser stopped)."""


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(case: str, files: dict[str, Path | None], monkeypatch: pytest.MonkeyPatch) -> None:
    root, readonly = files["root"], files["readonly"]
    assert root is not None
    if case == "read-only --out" and readonly is None:
        pytest.skip("no read-only folder can be made here (root without mount)")
    monkeypatch.delenv("VICREG_DEBUG", raising=False)
    args, named = _cases(root, readonly)[case]
    done = run_cli(*args)
    err = done.stderr
    assert done.returncode == 1, f"{case}: exit {done.returncode}\n{done.stdout[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err, err
    assert err.startswith(f"vicreg {args[0]}: "), err
    if case not in DETAILED:
        assert len(err.strip().splitlines()) == 1, err
    for text in named:
        assert text in err, f"{case}: {text!r} not in {err!r}"
    assert "╭" not in err, "a box instead of one line"


def _console_script() -> list[str]:
    """The installed ``vicreg`` console script of this interpreter's environment, else ``python -m vicreg``."""
    script = Path(sys.executable).parent / "vicreg"
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "vicreg"]


@pytest.mark.slow
def test_the_console_script_in_a_real_process(tmp_path: Path) -> None:
    """The process boundary: bad input gives exit status 1 and one line on stderr, without a traceback."""
    env = subprocess_env()
    env.pop("VICREG_DEBUG", None)
    run = [*_console_script(), "eval", str(tmp_path / "nothing")]
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("vicreg eval: ") and "nothing does not exist" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------------ in-process


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VICREG_DEBUG", raising=False)
    with pytest.raises(SystemExit, match=r"^vicreg export: .*nothing does not exist"):
        main(["export", str(tmp_path / "nothing")])
    monkeypatch.setenv("VICREG_DEBUG", "1")
    with pytest.raises(CheckpointError, match="nothing does not exist"):
        main(["export", str(tmp_path / "nothing")])


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cfg):  # type: ignore[no-untyped-def]
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "run_training", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["train", "--data", "x.npz"])

    def third_party(cfg):  # type: ignore[no-untyped-def]
        raise ValueError("raised outside vicreg")  # this file is not in the package: a bug, not bad input

    monkeypatch.setattr(cli, "run_training", third_party)
    with pytest.raises(ValueError, match="raised outside vicreg"):
        main(["train", "--data", "x.npz"])


@pytest.mark.parametrize(
    ("err", "expected", "words"),
    [
        (OSError(28, "No space left on device", "/runs/a/last.pt"), True, ["/runs/a/last.pt", "free some space"]),
        (PermissionError(13, "Permission denied", "/runs/b"), True, ["Permission denied: /runs/b", "permissions"]),
        (OSError(30, "Read-only file system", "/ro/x"), True, ["/ro/x", "read-only"]),
        (ModuleNotFoundError("No module named 'umap'", name="umap"), True, ["umap", "pip install umap"]),
        (CheckpointError("/r/last.pt is damaged; delete it"), True, ["/r/last.pt is damaged; delete it"]),
        (KeyError("x"), False, []),
        (TypeError("x"), False, []),
        (RuntimeError("CUDA error"), False, []),
    ],
)
def test_expected_errors_and_their_words(err: BaseException, expected: bool, words: list[str]) -> None:
    assert is_expected(err) is expected
    for word in words:
        assert word in describe_error(err)


def test_a_value_error_of_vicreg_is_expected() -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(epochs=0)
    assert is_expected(info.value) and "epochs must be >= 1" in describe_error(info.value)
