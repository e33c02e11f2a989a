"""Bad checkpoints: truncated at every point, bit flips, garbage, pickled code, another run's config.

Each must give a :class:`CheckpointError` that says what is wrong, never run code, and never load silently
different or partial state; a refused checkpoint is left as it was.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import env_int, tiny_npz
from vicreg.checkpoint import CheckpointError, load_checkpoint, read_backbone_state, save_checkpoint
from vicreg.config import ModelConfig, OptimConfig, TrainConfig, ViewsConfig
from vicreg.train import train

# torch.load warns about the pickle protocol of files it then refuses (plain pickles, mangled streams)
pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore:Detected pickle protocol")]

FLIPS = env_int("VICREG_RELIABILITY_FLIPS", 300)


def _cfg(root: Path, **overrides: Any) -> TrainConfig:
    cfg = TrainConfig(
        out=root / "run",
        data=str(tiny_npz(root / "d.npz", n=48)),
        epochs=1,
        max_steps=2,
        batch_size=16,
        device="cpu",
        ckpt_every=1,
        knn_every=0,
        progress=False,
        threads=1,  # bit-exact: no thread count chosen by timing
        views=ViewsConfig(size=16),
        model=ModelConfig(backbone="small_cnn", expander="32-32", width=4),
        optim=OptimConfig(base_lr=0.2, warmup_epochs=0.5),
    )
    return replace(cfg, **overrides)


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, bytes]:
    """A checkpoint written by a real (tiny) training run, and its config."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = _cfg(root)
    train(cfg)
    return cfg, (cfg.out / "checkpoints" / "last.pt").read_bytes()


def _fresh_run(tmp_path: Path, real_checkpoint: tuple[TrainConfig, bytes], blob: bytes) -> tuple[TrainConfig, Path]:
    """A run folder whose checkpoint is ``blob``, for a config like the one that wrote the real checkpoint."""
    cfg, _ = real_checkpoint
    cfg = replace(cfg, out=tmp_path / "run", max_steps=3)
    path = cfg.out / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    return cfg, path


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ------------------------------------------------------------------------------------------------ damaged files


def test_every_truncation_point_is_refused(tmp_path: Path, real_checkpoint) -> None:
    _, blob = real_checkpoint
    path = tmp_path / "cut.pt"
    cuts = sorted({*range(0, len(blob), max(1, len(blob) // 500)), *range(max(0, len(blob) - 100), len(blob))})
    for cut in cuts:
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
            load_checkpoint(path)
    assert len(cuts) > 500


def test_byte_flips_never_load_different_state(tmp_path: Path, real_checkpoint) -> None:
    """A flipped byte is refused (zip structure or CRC-32) or, in padding, changes nothing that is loaded."""
    _, blob = real_checkpoint
    original = load_checkpoint(_write(tmp_path / "ok.pt", blob))
    rng = random.Random(0)
    path = tmp_path / "flip.pt"
    refused = 0
    for _ in range(FLIPS):
        data = bytearray(blob)
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        path.write_bytes(data)
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            assert str(path) in str(err)
            refused += 1
            continue
        assert _equal(state, original), f"a flip at byte {at} of {len(blob)} loaded different state"
    assert refused > FLIPS // 2  # most bytes are payload or structure; only zip padding and metadata are free


def test_malformed_pickle_in_a_valid_archive_is_refused(tmp_path: Path, real_checkpoint) -> None:
    """The pickle inside changed and the archive rebuilt with matching CRCs (a crafted file, not a damaged
    one): whatever the unpickler meets, the outcome is a CheckpointError or a loaded dict, nothing else."""
    _, blob = real_checkpoint
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    name = next(n for n in members if n.endswith("data.pkl"))
    rng = random.Random(1)
    path = tmp_path / "crafted.pt"
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(FLIPS):
        pkl = bytearray(members[name])
        for _ in range(rng.randint(1, 3)):
            pkl[rng.randrange(len(pkl))] = rng.randrange(256)
        path.write_bytes(_zip({**members, name: bytes(pkl)}))
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            outcomes["refused"] += 1
            continue
        assert isinstance(state, dict)
        outcomes["loaded"] += 1
    assert outcomes["refused"] > FLIPS // 2, outcomes


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: os.urandom(5000), "truncated or not a checkpoint"),
        (lambda: b"", "truncated or not a checkpoint"),
        (lambda: b"PK\x05\x06" + bytes(18), "truncated or not a checkpoint"),  # an empty zip archive
        (lambda: _zip({"notes.txt": b"hello"}), "truncated or not a checkpoint"),
        (lambda: _torch_bytes(torch.zeros(3)), "not a vicreg checkpoint"),
        (lambda: _torch_bytes({"state_dict": {"w": torch.zeros(2)}}), "not a vicreg checkpoint"),
        (lambda: pickle.dumps({"format": "vicreg-checkpoint-v1"}), "truncated or not a checkpoint"),
    ],
)
def test_garbage_and_foreign_files_are_refused(tmp_path: Path, make: Callable[[], bytes], match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(_write(tmp_path / "x.pt", make()))


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _torch_bytes(obj: Any, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ pickled code


class _Run:
    """Unpickling it calls ``fn(*args)``."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, self.args)


def _payloads(marker: Path) -> dict[str, Any]:
    import builtins
    import subprocess

    return {
        "os.system": _Run(os.system, f"touch {marker}"),
        "subprocess.call": _Run(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": _Run(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "pathlib.touch": _Run(Path.touch, marker),
    }


PLACES = ("top level", "inside the model state", "inside the optimizer state", "as a config value")


def _evil_state(base: dict[str, Any], payload: Any, place: str) -> dict[str, Any]:
    state = {**base}
    if place == "top level":
        state["extra"] = payload
    elif place == "inside the model state":
        state["model"] = {**state["model"], "evil": payload}
    elif place == "inside the optimizer state":
        state["optimizer"] = {**state["optimizer"], "param_groups": [*state["optimizer"]["param_groups"], payload]}
    else:
        state["config"] = {**state["config"], "seed": payload}
    return state


@pytest.mark.parametrize("place", PLACES)
def test_pickled_objects_never_run(tmp_path: Path, real_checkpoint, place: str) -> None:
    """Every payload, anywhere in the checkpoint, in the new and the legacy torch format and as a plain
    pickle: refused by load_checkpoint, by resuming a run and by read_backbone_state; the payload never runs."""
    _, blob = real_checkpoint
    base = load_checkpoint(_write(tmp_path / "ok.pt", blob))
    marker = tmp_path / "pwned"
    for name, payload in _payloads(marker).items():
        state = _evil_state(base, payload, place)
        files = {
            "zip": _torch_bytes(state),
            "legacy": _torch_bytes(state, _use_new_zipfile_serialization=False),
            "pickle": pickle.dumps(state),
        }
        for kind, data in files.items():
            what = f"{name} {place} ({kind})"
            path = _write(tmp_path / f"evil_{kind}.pt", data)
            with pytest.raises(CheckpointError) as err:
                load_checkpoint(path)
            assert "could run code" in str(err.value) or "not a checkpoint" in str(err.value), what
            with pytest.raises(CheckpointError):
                read_backbone_state(path)
            if kind == "zip":  # the others are refused before unpickling, as load_checkpoint shows
                cfg_here, ckpt = _fresh_run(tmp_path / "runs" / name, real_checkpoint, data)
                with pytest.raises(CheckpointError, match="could run code"):
                    train(cfg_here)
                assert ckpt.read_bytes() == data, f"{what}: the refused checkpoint was changed"
            assert not marker.exists(), f"{what}: the payload ran"


# ------------------------------------------------------------------------------------------------ another run


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model": ModelConfig(backbone="small_cnn", expander="64-64", width=4)}, "model"),
        ({"model": ModelConfig(backbone="small_cnn", expander="32-32", width=8)}, "model"),
        ({"optim": OptimConfig(name="sgd", base_lr=0.2, warmup_epochs=0.5)}, "optim.name"),
        ({"optim": OptimConfig(name="adamw", base_lr=0.2, warmup_epochs=0.5)}, "optim.name"),
        ({"batch_size": 8}, "batch_size"),
    ],
)
def test_checkpoint_of_another_config_is_refused(tmp_path: Path, real_checkpoint, change, key: str) -> None:
    _, blob = real_checkpoint
    cfg, ckpt = _fresh_run(tmp_path, real_checkpoint, blob)
    with pytest.raises(CheckpointError, match=rf"resuming would change (.*, )?{key}[. ]"):
        train(replace(cfg, **change))
    assert ckpt.read_bytes() == blob


def _surgery(state: dict[str, Any], what: str) -> dict[str, Any]:
    state = {**state, "model": {**state["model"]}}
    model = state["model"]
    first = next(k for k, v in model.items() if v.is_floating_point())
    if what == "a model tensor missing":
        del model[first]
    elif what == "an extra model tensor":
        model["expander.extra.weight"] = torch.zeros(3)
    elif what == "a model tensor of another shape":
        model[first] = torch.zeros(*model[first].shape[:-1], model[first].shape[-1] + 1)
    elif what in ("optimizer", "rng", "step", "config"):
        del state[what]
    elif what == "a negative step":
        state["step"] = -3
    elif what == "a step that is not a number":
        state["step"] = "12"
    elif what == "optimizer state of another model":
        state["optimizer"] = {"state": {}, "param_groups": [{"params": [0, 1], "lr": 0.1}]}
    elif what == "rng state of the wrong type":
        state["rng"] = {"python": [1, 2], "torch": torch.zeros(3)}
    elif what == "a config that is not a mapping":
        state["config"] = [1, 2]
    return state


@pytest.mark.parametrize(
    "what",
    [
        "a model tensor missing",
        "an extra model tensor",
        "a model tensor of another shape",
        "optimizer",
        "rng",
        "step",
        "config",
        "a negative step",
        "a step that is not a number",
        "optimizer state of another model",
        "rng state of the wrong type",
        "a config that is not a mapping",
    ],
)
def test_incomplete_or_mismatched_state_is_never_loaded_partially(tmp_path: Path, real_checkpoint, what) -> None:
    _, blob = real_checkpoint
    state = _surgery(load_checkpoint(_write(tmp_path / "ok.pt", blob)), what)
    state.pop("format")
    cfg, ckpt = _fresh_run(tmp_path, real_checkpoint, b"")
    save_checkpoint(state, ckpt)
    written = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=str(ckpt)):
        train(cfg)
    assert ckpt.read_bytes() == written
