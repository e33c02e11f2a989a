"""Atomic checkpoint writes, safe loads and clear errors; backbone files carry their encoder description."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
import torchvision

from vicreg.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    read_backbone_spec,
    read_backbone_state,
    restore_rng_state,
    save_checkpoint,
    write_backbone,
)
from vicreg.files import FileError, atomic_write, remove_partial_writes
from vicreg.models import EncoderSpec

RESNET18 = EncoderSpec("resnet18", {"in_channels": 3}, 512, "image", (3, 32, 32), (0.5,) * 3, (0.25,) * 3)


def test_round_trip(tmp_path: Path) -> None:
    state = {"step": 7, "model": {"w": torch.arange(6.0).view(2, 3)}, "config": {"lr": 0.1, "name": "x"}}
    path = save_checkpoint(state, tmp_path / "ck" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == {"lr": 0.1, "name": "x"}
    torch.testing.assert_close(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.parametrize("cut", [0, 10, 200, -1])
def test_truncated_checkpoint_raises(tmp_path: Path, cut: int) -> None:
    path = save_checkpoint({"step": 1, "w": torch.randn(100)}, tmp_path / "a.pt")
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(path)


def test_garbage_and_foreign_files(tmp_path: Path) -> None:
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "f.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a vicreg checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "vicreg-checkpoint-v1", "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)


def test_failed_write_keeps_previous(tmp_path: Path) -> None:
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")

    class Boom:
        pass

    with pytest.raises(Exception):  # noqa: B017 - torch.save of an unpicklable value, any error type
        save_checkpoint({"step": 2, "bad": lambda: 0, "obj": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only run folder (simulated: the tests run as root, who ignores permissions)."""
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(CheckpointError, match=r"cannot write .*Permission denied"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_disk_full_during_save_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint({"step": 1, "w": torch.zeros(10)}, tmp_path / "last.pt")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint({"step": 2, "w": torch.ones(10)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_latest_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 20, 100):
        save_checkpoint({"step": step}, tmp_path / f"step_{step}.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_100.pt"
    save_checkpoint({"step": 101}, tmp_path / "last.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "last.pt"


def test_rng_state_round_trip(tmp_path: Path) -> None:
    state = capture_rng_state()
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    expected = (random.random(), torch.rand(3))
    random.seed(123)
    torch.manual_seed(123)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert random.random() == expected[0]
    torch.testing.assert_close(torch.rand(3), expected[1])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_backbone_file_loads_into_torchvision_strictly(tmp_path: Path, suffix: str) -> None:
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    path = write_backbone(net.state_dict(), RESNET18, tmp_path / f"backbone{suffix}")
    assert read_backbone_spec(path) == RESNET18
    state = read_backbone_state(path)
    assert type(state) is dict and all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = torchvision.models.resnet18()
    fresh.fc = torch.nn.Identity()
    fresh.load_state_dict(state, strict=True)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


def test_backbone_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"safetensors or \.pt"):
        write_backbone({"w": torch.zeros(1)}, RESNET18, tmp_path / "b.onnx")
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(b"nope")
    for read in (read_backbone_state, read_backbone_spec):
        with pytest.raises(CheckpointError, match="truncated or not a backbone file"):
            read(bad)
    ckpt = save_checkpoint({"step": 1, "model": {"w": torch.zeros(1)}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="a training checkpoint, not a backbone file"):
        read_backbone_state(ckpt)
    torch.save({"step": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a backbone file: it holds step"):
        read_backbone_state(tmp_path / "other.pt")
    assert read_backbone_spec(tmp_path / "other.pt") is None  # a file without a description


def test_atomic_write_leaves_the_old_file_on_a_failed_check_and_partial_writes_are_removable(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "a.txt", lambda f: f.write(b"old"))

    def refuse(tmp: Path) -> None:
        assert tmp.read_bytes() == b"new" and tmp.name.startswith(".a.txt.")
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        atomic_write(target, lambda f: f.write(b"new"), check=refuse)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    left = tmp_path / ".a.txt.x1.tmp"  # what a process killed mid-write leaves
    left.write_bytes(b"partial")
    assert remove_partial_writes(tmp_path) == [left] and target.read_bytes() == b"old"
    assert CheckpointError is FileError  # a failed write of any file is one error type
