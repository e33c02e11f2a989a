"""The helpers every test module shares: a free port, tiny data, a tiny training config, the CLI run in-process
or in a real process, the tiny trained runs one per data kind (:class:`TinyRuns`, the ``tiny_runs`` fixture of
conftest.py), and checkpoint comparison. Test modules import from here, never from one another."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tests.data.make_files import write_idx
from vicreg.checkpoint import load_checkpoint
from vicreg.cli import main
from vicreg.config import ModelConfig, OptimConfig, TrainConfig, ViewsConfig

REPO = Path(__file__).resolve().parents[1]


def env_int(name: str, default: int) -> int:
    """A knob for longer soak runs, e.g. ``VICREG_RELIABILITY_KILLS=50 make test``."""
    return int(os.environ.get(name, default))


def free_port() -> int:
    """A TCP port nobody listens on now (for a torchrun rendezvous or a gloo process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_npz(path: Path, n: int = 96, size: int = 16, channels: int = 1, seed: int = 0) -> Path:
    """Two classes of labelled uint8 images: a bright square or a bright bar at a random place, on noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, channels, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        r, c = rng.integers(0, size - 6, 2)
        if labels[i]:
            images[i, :, r : r + 6, c : c + 6] = 220
        else:
            images[i, :, r : r + 2, :] = 220
    np.savez(path, images=images, labels=labels)
    return path


def fashion_like(root: Path, n_train: int = 1200, n_test: int = 300) -> None:
    """IDX files with two learnable classes (a bright square or a bright bar) and noise."""
    rng = np.random.default_rng(0)
    folder = root / "fashion-mnist"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 2).astype(np.uint8)
        for i in range(n):
            r, c = rng.integers(2, 18, 2)
            if labels[i]:
                images[i, r : r + 8, c : c + 8] = 230
            else:
                images[i, r : r + 3, 2:26] = 230
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def tiny_config(root: Path, **overrides: object) -> TrainConfig:
    """Two epochs of a width-4 small CNN on :func:`tiny_npz` (16 px views, batch 16, one thread) written to
    ``root/run``."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        out=root / "run",
        data=str(tiny_npz(root / "tiny.npz")),
        epochs=2,
        batch_size=16,
        device="cpu",
        log_every=1,
        diag_every=2,
        ckpt_every=3,
        progress=False,
        workers=0,
        threads=1,  # bit-identical reruns (None: chosen by measuring the steps)
        views=ViewsConfig(size=16),
        model=ModelConfig(backbone="small_cnn", expander="32-32", width=4),
        optim=OptimConfig(name="lars", base_lr=0.2, warmup_epochs=0.5),
    )
    return replace(cfg, **overrides)  # type: ignore[arg-type]


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 3


def image_npz(path: Path) -> Path:
    """48 random 16 px grey images, 3 classes."""
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (48, 1, 16, 16), dtype=np.uint8), labels=_labels(48))
    return path


def signal_npz(path: Path) -> Path:
    """48 + 24 two-channel signals of 40 samples, 3 classes shifted apart, with a test split."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 2, 40)).astype(np.float32) + _labels(48)[:, None, None]
    xt = rng.normal(size=(24, 2, 40)).astype(np.float32) + _labels(24)[:, None, None]
    np.savez(path, x=x, y=_labels(48), x_test=xt, y_test=_labels(24))
    return path


def table_npz(path: Path) -> Path:
    """48 + 24 table rows of 6 features, 3 classes shifted apart, with a test split."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(48, 6)).astype(np.float32) + _labels(48)[:, None]
    np.savez(path, x=x, y=_labels(48), x_test=rng.normal(size=(24, 6)).astype(np.float32), y_test=_labels(24))
    return path


def pair_npz(path: Path) -> Path:
    """48 + 24 pairs of a 16 px grey image and a row of 5 features, 3 classes, with a test split."""
    rng = np.random.default_rng(3)
    np.savez(
        path,
        x_a=rng.integers(0, 256, (48, 1, 16, 16), dtype=np.uint8),
        x_b=rng.normal(size=(48, 5)).astype(np.float32),
        y=_labels(48),
        x_a_test=rng.integers(0, 256, (24, 1, 16, 16), dtype=np.uint8),
        x_b_test=rng.normal(size=(24, 5)).astype(np.float32),
        y_test=_labels(24),
    )
    return path


IMAGE_FLAGS = ["--views.size", "16", "--model.backbone", "small_cnn", "--model.width", "4"]
KINDS: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "image": (tiny_npz, IMAGE_FLAGS),
    "signal": (signal_npz, ["--modality", "signal", "--model.backbone", "resnet1d", "--model.width", "4"]),
    "table": (table_npz, ["--modality", "table", "--model.backbone", "mlp", "--model.width", "8"]),
    "pair": (
        pair_npz,
        ["--modality", "image", "--modality-b", "table", *IMAGE_FLAGS, "--model.backbone-b", "mlp"],
    ),
}
"""Each data kind: its tiny data and the ``vicreg train`` flags of a tiny encoder for it."""
TINY_TRAIN = [
    "--batch-size", "16", "--device", "cpu", "--epochs", "2", "--no-progress", "--log-every", "1",
    "--model.expander", "16-16", "--optim.warmup-epochs", "0.5", "--diag-every", "2",
]  # fmt: skip


class TinyRuns:
    """One tiny run per data kind, trained with ``vicreg train`` (in-process) the first time a test asks for it
    and shared by every test of the session. :meth:`path` is for reading only (load, export elsewhere, embed to a
    file elsewhere); :meth:`copy` gives a test its own copy to write into (eval.json, the feature cache, the
    report). :meth:`check_untouched` (at the end of the session) fails if a test wrote into a shared run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs: dict[str, tuple[Path, dict[str, tuple[int, int]]]] = {}

    def path(self, kind: str) -> Path:
        if kind not in self._runs:
            data = KINDS[kind][0](self.root / f"{kind}.npz")
            run = self.root / kind
            done = run_cli("train", "--data", data, "--out", run, *TINY_TRAIN, *KINDS[kind][1])
            assert done.returncode == 0, f"the tiny {kind} run did not train: {done.stderr[-3000:]}"
            self._runs[kind] = (run, _listing(run))
        return self._runs[kind][0]

    def copy(self, kind: str, dest: Path) -> Path:
        """A fresh copy of the ``kind`` run at ``dest`` (its data stays shared: the run refers to it by path)."""
        shutil.copytree(self.path(kind), dest)
        return dest

    def data(self, kind: str) -> Path:
        """The file the ``kind`` run was trained on."""
        self.path(kind)
        return self.root / f"{kind}.npz"

    def check_untouched(self) -> None:
        changed = {
            kind: sorted(set(_listing(run).items()) ^ set(files.items())) for kind, (run, files) in self._runs.items()
        }
        changed = {kind: c for kind, c in changed.items() if c}
        assert not changed, f"a test wrote into a shared tiny run (use tiny_runs.copy): {changed}"


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@dataclass
class CliResult:
    """What one ``vicreg`` command printed and its exit status (as a real process would have)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Run ``vicreg ARGS`` in this process through :func:`vicreg.cli.main`, capturing its output and exit status.
    Use :func:`run_cli_process` only where the process boundary is the thing under test."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as done:
            if isinstance(done.code, str):
                print(done.code, file=sys.stderr)
                code = 1
            else:
                code = int(done.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_cli_process(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m vicreg ARGS`` as a real process (one thread, this checkout's sources)."""
    command = [sys.executable, "-m", "vicreg", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(**env), timeout=timeout, cwd=REPO)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``vicreg train`` on the tiny data: small CNN of width 4, 16 px views, one thread."""
    return [
        sys.executable, "-m", "vicreg", "train", "--data", str(data), "--out", str(out), "--device", "cpu",
        "--batch-size", "16", "--views.size", "16", "--model.backbone", "small_cnn", "--model.width", "4",
        "--log-every", "1", "--optim.warmup-epochs", "1", "--threads", "1", *extra,
    ]  # fmt: skip


def subprocess_env(**extra: str) -> dict[str, str]:
    """One thread per process (bit-identical results between runs) and this checkout's ``src`` first."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def assert_same_state(a: Path, b: Path) -> None:
    """Two checkpoints hold bit-identical model and optimiser state and the same step."""
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"]
    for part in ("model", "optimizer"):
        flat_a, flat_b = _flatten(sa[part]), _flatten(sb[part])
        assert flat_a.keys() == flat_b.keys(), part
        for key, value in flat_a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, flat_b[key]), f"{part}.{key} differs"
            else:
                assert value == flat_b[key], f"{part}.{key} differs"


def _flatten(x: object, prefix: str = "") -> dict[str, object]:
    if isinstance(x, dict):
        out: dict[str, object] = {}
        for k, v in x.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(x, list | tuple):
        out = {}
        for i, v in enumerate(x):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix: x}
