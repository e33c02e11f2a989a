"""A full disk and a read-only run folder, for real: a small tmpfs mounted for the test (needs root, as CI
has; skipped otherwise) and, needing no privilege, a file-size limit (RLIMIT_FSIZE) in a subprocess.

Every failed save is a :class:`CheckpointError` naming the cause, the previous checkpoint stays intact and
loadable, no temporary file is left, and a run resumed once there is space again finishes with the weights
of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_same_state, subprocess_env, tiny_npz
from vicreg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_backbone
from vicreg.config import ModelConfig, OptimConfig, TrainConfig, ViewsConfig
from vicreg.models import EncoderSpec
from vicreg.train import train

pytestmark = pytest.mark.reliability

PAGE = 4096


@contextlib.contextmanager
def _tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path``, unmounted afterwards."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); test_file_size_limit covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def _fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(bytes(max(0, free - leave)))
    return filler


def _state(n: int, step: int) -> dict:
    return {"step": step, "w": torch.full((n,), float(step))}


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.rglob(".*.tmp")]


def test_disk_full_at_every_point_of_a_save(tmp_path: Path) -> None:
    """The disk fills at a different byte of the write each time: always a clear error, the old file intact."""
    with _tmpfs(tmp_path / "fs", 64 * PAGE) as fs:
        path = save_checkpoint(_state(6000, 1), fs / "last.pt")  # ~24 KB
        size = path.stat().st_size
        for leave in range(0, size - PAGE, PAGE // 4):  # from no room at all to one page short
            filler = _fill(fs, leave)
            with pytest.raises(CheckpointError, match="No space left on device"):
                save_checkpoint(_state(6000, 2), path)
            assert load_checkpoint(path)["step"] == 1
            _no_temporaries(fs)
            filler.unlink()
        save_checkpoint(_state(6000, 3), path)  # space again: saving works
        assert load_checkpoint(path)["step"] == 3


def test_read_only_file_system(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "fs", 64 * PAGE) as fs:
        path = save_checkpoint(_state(100, 1), fs / "run" / "checkpoints" / "last.pt")
        _remount(fs, "ro")
        try:
            with pytest.raises(CheckpointError, match="Read-only file system"):
                save_checkpoint(_state(100, 2), path)
            with pytest.raises(CheckpointError, match="Read-only file system"):
                write_backbone({"w": torch.zeros(3)}, EncoderSpec("mlp"), fs / "run" / "backbone.safetensors")
            with pytest.raises(CheckpointError, match="Read-only file system"):
                save_checkpoint(_state(100, 2), fs / "run" / "new" / "last.pt")  # the folder cannot be made
            assert load_checkpoint(path)["step"] == 1
        finally:
            _remount(fs, "rw")


def _cfg(root: Path, out: Path, **overrides) -> TrainConfig:
    cfg = TrainConfig(
        out=out,
        data=str(tiny_npz(root / "d.npz", n=64)),
        epochs=1,
        batch_size=16,
        device="cpu",
        ckpt_every=2,
        log_every=1,
        knn_every=0,
        progress=False,
        threads=1,  # bit-exact: no thread count chosen by timing
        views=ViewsConfig(size=16),
        model=ModelConfig(backbone="small_cnn", expander="256-256", width=4),
        optim=OptimConfig(base_lr=0.2, warmup_epochs=0.5),
    )
    return replace(cfg, **overrides)


@pytest.mark.slow
def test_training_run_fills_the_disk_then_resumes(tmp_path: Path) -> None:
    """The disk of the run folder has room for one checkpoint: the second save fails with a clear error,
    the first stays loadable, and once there is space the resumed run ends as an uninterrupted one."""
    reference = _cfg(tmp_path, tmp_path / "ref")
    train(reference)
    size = (reference.out / "checkpoints" / "last.pt").stat().st_size
    with _tmpfs(tmp_path / "fs", 64 * PAGE + 4 * size) as fs:
        cfg = _cfg(tmp_path, fs / "run")
        filler = _fill(fs, size + size // 2 + 12 * PAGE)  # config, metrics, events and one checkpoint
        with pytest.raises(CheckpointError, match=r"last\.pt: No space left on device"):
            train(cfg)
        state = load_checkpoint(cfg.out / "checkpoints" / "last.pt")
        assert state["step"] == cfg.ckpt_every
        _no_temporaries(cfg.out)
        filler.unlink()
        result = train(cfg)
        assert result.step == reference.epochs * 64 // 16
        assert_same_state(cfg.out / "checkpoints" / "last.pt", reference.out / "checkpoints" / "last.pt")


def test_training_in_a_read_only_run_folder(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "fs", 256 * PAGE) as fs:
        cfg = _cfg(tmp_path, fs / "run", max_steps=2)
        train(cfg)
        before = (cfg.out / "checkpoints" / "last.pt").read_bytes()
        _remount(fs, "ro")
        try:
            # refused before any step: the run folder's lock file cannot be opened (or, without it, the save)
            with pytest.raises((CheckpointError, OSError), match="Read-only file system"):
                train(replace(cfg, max_steps=4))
        finally:
            _remount(fs, "rw")
        assert (cfg.out / "checkpoints" / "last.pt").read_bytes() == before


_LIMITED = """
import resource, signal, sys, torch
from vicreg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
path = sys.argv[1]
save_checkpoint({"step": 1, "w": torch.zeros(100)}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
except CheckpointError as err:
    print("refused:", err)
"""


def test_file_size_limit(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes writes past 4 KiB fail (EFBIG), as a full disk does; no privilege needed."""
    path = tmp_path / "last.pt"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LIMITED), str(path)],
        capture_output=True, text=True, env=subprocess_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "File too large" in done.stdout, done.stdout
    assert load_checkpoint(path)["step"] == 1
    _no_temporaries(tmp_path)
