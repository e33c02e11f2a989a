"""The helpers every test module shares: a free port, tiny data, a tiny training config, the CLI run in-process
or in a real process, and checkpoint comparison. Test modules import from here, never from one another."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

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
