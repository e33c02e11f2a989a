"""Helpers shared by the reliability tests: tiny data, CLI arguments, subprocess environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from vicreg.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def env_int(name: str, default: int) -> int:
    """A knob for longer soak runs, e.g. ``VICREG_RELIABILITY_KILLS=50 make test``."""
    return int(os.environ.get(name, default))


def tiny_npz(path: Path, n: int = 96, size: int = 16, seed: int = 0) -> Path:
    """Labelled grey images: a bright square or a bright bar at a random place, on noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, 1, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        r, c = rng.integers(0, size - 6, 2)
        if labels[i]:
            images[i, :, r : r + 6, c : c + 6] = 220
        else:
            images[i, :, r : r + 2, :] = 220
    np.savez(path, images=images, labels=labels)
    return path


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``vicreg train`` on the tiny data: small CNN of width 4, 16 px views."""
    return [
        sys.executable, "-m", "vicreg", "train", "--data", str(data), "--out", str(out), "--device", "cpu",
        "--batch-size", "16", "--views.size", "16", "--model.backbone", "small_cnn", "--model.width", "4",
        "--log-every", "1", "--optim.warmup-epochs", "1", *extra,
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
