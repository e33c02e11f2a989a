"""Checkpoints and backbone files: safe loads, kept predecessors, RNG state, and the one backbone writer.

* Every write is atomic (:func:`vicreg.files.atomic_write`): a crash or a full disk never leaves a half-written
  checkpoint and the previous one stays intact.
* Loads use ``torch.load(weights_only=True)``: a checkpoint can hold tensors, numbers, strings, lists, tuples
  and dicts, never arbitrary pickled objects, so loading one never runs code.
* A truncated, garbage or foreign file raises :class:`CheckpointError` naming the path and what to do; so
  does a damaged one: the CRC-32 of every archive member is checked first (``torch.load`` does not), so a
  flipped bit never loads as silently different weights.
* A run keeps its last few checkpoints (:func:`save_keeping`): ``last.pt`` is the newest, and each save first
  keeps the previous ``last.pt`` as ``step_NNNNNNNN.pt`` (a hard link: no copy). :func:`checkpoint_candidates`
  lists them newest first and :func:`newest_good_checkpoint` skips damaged ones.
* A backbone file (:func:`write_backbone`: the run's ``backbone.safetensors`` and every ``vicreg export`` but
  onnx) is the backbone's plain state dict plus its :class:`~vicreg.models.EncoderSpec`, so it can be rebuilt
  from the file alone. ``.safetensors`` keeps the spec as JSON in the file's metadata (key ``vicreg_encoder``);
  ``.pt`` keeps it in the state dict's own ``_metadata`` (where torch keeps each module's version), so
  ``torch.load(weights_only=True)`` still returns a plain state dict that loads strictly into the architecture.
  :func:`read_backbone_state` returns the tensors, :func:`read_backbone_spec` the description.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from vicreg.files import FileError, atomic_write, fsync_dir
from vicreg.models import EncoderSpec

__all__ = [
    "BACKBONE_FORMAT",
    "ENCODER_KEY",
    "FORMAT",
    "CheckpointError",
    "CheckpointWarning",
    "backbone_metadata",
    "capture_rng_state",
    "check_checkpoint",
    "checkpoint_candidates",
    "latest_checkpoint",
    "load_checkpoint",
    "newest_good_checkpoint",
    "read_backbone_spec",
    "read_backbone_state",
    "read_tensor_file",
    "restore_rng_state",
    "save_checkpoint",
    "save_keeping",
    "vicreg_version",
    "write_backbone",
]

FORMAT = "vicreg-checkpoint-v1"
BACKBONE_FORMAT = "vicreg-backbone"
ENCODER_KEY = "vicreg_encoder"
_BACKBONE_SUFFIXES = (".safetensors", ".pt", ".pth")
_LOAD_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError)


CheckpointError = FileError
"""A checkpoint or backbone file that cannot be written or read, or does not belong to this run (the same class
as :class:`vicreg.files.FileError`: a failed atomic write is one too)."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an earlier one."""


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically save ``state`` (tensors, numbers, strings and containers of them) with a format marker."""
    payload = {"format": FORMAT, **state}
    return atomic_write(path, lambda f: torch.save(payload, f))


def check_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`CheckpointError` unless ``path`` is a complete archive whose every part has the checksum it
    was written with (reads the whole file, unpickles nothing); returns the path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: check the path (a run folder holds checkpoints/last.pt)")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive; a cut one loses its index
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint (not a complete torch.save archive); "
            "delete it to resume from an earlier checkpoint, or start a new run"
        )
    _check_crc(path)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``)."""
    path = check_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain data, and was not loaded (loading it could "
                f"run code): {_first_line(err)}"
            ) from err
        raise CheckpointError(f"{path} is truncated or not a checkpoint: {_first_line(err)}") from err
    except Exception as err:  # a malformed pickle stream makes the unpickler raise IndexError, TypeError, ...
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint ({type(err).__name__}: {_first_line(err)}); "
            "delete it to resume from an earlier checkpoint, or start a new run"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vicreg checkpoint (no '{FORMAT}' marker)")
    return state


def _check_crc(path: Path) -> None:
    """Read every member of the archive and compare its CRC-32 with the one recorded when it was written."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (*_LOAD_ERRORS, OSError) as err:
        raise CheckpointError(
            f"{path} is truncated or not a checkpoint ({type(err).__name__}: {_first_line(err)}); "
            "delete it to resume from an earlier checkpoint, or start a new run"
        ) from err
    if bad is not None:
        raise CheckpointError(
            f"{path} is damaged: the checksum of its part {bad!r} does not match what was written (a disk error "
            "or a bad copy); delete it to resume from an earlier checkpoint, or start a new run"
        )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """``folder/last.pt`` if it exists, else the highest ``step_*.pt``; ``None`` when there is none."""
    folder = Path(folder)
    last = folder / "last.pt"
    if last.is_file():
        return last
    steps = sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]) if p.stem[5:].isdigit() else -1)
    return steps[-1] if steps else None


def _step_of(path: Path) -> int:
    digits = path.stem.removeprefix("step_")
    return int(digits) if path.stem.startswith("step_") and digits.isdigit() else -1


def _step_files(folder: Path) -> list[Path]:
    """``folder/step_*.pt``, newest (highest step) first."""
    found = [p for p in folder.glob("step_*.pt") if _step_of(p) >= 0 and p.is_file()]
    return sorted(found, key=_step_of, reverse=True)


def checkpoint_candidates(folder: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints of a run's ``checkpoints`` folder in the order a resume tries them: ``last.pt``, then
    ``step_*.pt`` from the newest; a file that is a hard link of one already listed is listed once."""
    folder = Path(folder)
    listed: list[Path] = []
    for path in [folder / "last.pt", *_step_files(folder)] if folder.is_dir() else []:
        if path.is_file() and not any(_same_file(path, seen) for seen in listed):
            listed.append(path)
    return listed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def newest_good_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The first intact checkpoint of :func:`checkpoint_candidates` (checked with :func:`check_checkpoint`);
    ``None`` when the folder holds none at all. Each damaged one skipped is reported as a
    :class:`CheckpointWarning`; when every one is damaged, :class:`CheckpointError` lists them."""
    candidates = checkpoint_candidates(folder)
    errors: list[CheckpointError] = []
    for path in candidates:
        try:
            return check_checkpoint(path)
        except CheckpointError as err:
            errors.append(err)
            if path is not candidates[-1]:
                warnings.warn(f"skipped a damaged checkpoint: {err}", CheckpointWarning, stacklevel=2)
    if errors:
        raise CheckpointError(no_readable_checkpoint(Path(folder), errors))
    return None


def no_readable_checkpoint(folder: Path, errors: list[CheckpointError]) -> str:
    """The message when every checkpoint of ``folder`` is damaged (one line per file)."""
    lines = "\n".join(f"  {err}" for err in errors)
    return (
        f"no readable checkpoint in {folder} ({len(errors)} damaged); restore one from a backup, or delete the "
        f"folder to start a new run:\n{lines}"
    )


def save_keeping(
    state: Mapping[str, Any], folder: str | os.PathLike[str], *, keep: int, previous_step: int | None
) -> Path:
    """Save ``state`` (with its ``step``) as ``folder/last.pt`` and keep the ``keep`` newest checkpoints.

    ``previous_step`` is the step of the intact checkpoint now at ``last.pt`` (``None``: none, or it is
    damaged): before the new one replaces it, it is kept as ``step_NNNNNNNN.pt`` (a hard link, or a copy where
    links are not supported). Then older ``step_*.pt`` files beyond ``keep - 1`` are removed, as are any of
    this step or later (left by a run that went further before it was resumed from an earlier checkpoint).
    Every write is atomic: a crash at any point leaves ``last.pt`` or its kept predecessor intact.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    folder = Path(folder)
    last = folder / "last.pt"
    step = int(state["step"])
    if keep > 1 and previous_step is not None and previous_step != step and last.is_file():
        _keep_as(last, folder / f"step_{previous_step:08d}.pt")
    path = save_checkpoint(state, last)
    older = [p for p in _step_files(folder) if _step_of(p) < step]
    for stale in [p for p in _step_files(folder) if _step_of(p) >= step] + older[keep - 1 :]:
        stale.unlink(missing_ok=True)
    return path


def _keep_as(last: Path, kept: Path) -> None:
    if kept.is_file() and _same_file(kept, last):
        return
    tmp = kept.with_name(f".{kept.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise CheckpointError(f"could not keep {last} as {kept}: {err.strerror or err}") from err
        with open(last, "rb") as src:  # no hard links on this file system: a copy
            atomic_write(kept, lambda f: shutil.copyfileobj(src, f))
        return
    os.replace(tmp, kept)
    fsync_dir(kept.parent)


def capture_rng_state() -> dict[str, Any]:
    """The Python and torch (CPU and CUDA) random states, as plain data for a checkpoint."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def vicreg_version() -> str:
    """The installed vicreg version (``unknown`` in a checkout that is not installed)."""
    try:
        return metadata.version("vicreg")
    except metadata.PackageNotFoundError:
        return "unknown"


def backbone_metadata(spec: EncoderSpec) -> dict[str, str]:
    """What a backbone file says about itself: its format, the encoder description (JSON) and the vicreg version."""
    return {"format": BACKBONE_FORMAT, ENCODER_KEY: json.dumps(spec.to_dict()), "vicreg_version": vicreg_version()}


def write_backbone(
    state_dict: Mapping[str, Tensor],
    spec: EncoderSpec,
    path: str | os.PathLike[str],
    check: Any = None,
) -> Path:
    """Write a backbone's ``state_dict`` with its description ``spec``, atomically: the one backbone writer.

    The format follows the suffix: ``.safetensors`` (the spec in the file's metadata) or ``.pt`` / ``.pth``
    (``torch.save`` of the plain state dict, the spec in its ``_metadata``). ``check(temporary_path)``, when
    given, runs on the written file before it is renamed to ``path`` (see :func:`vicreg.files.atomic_write`).
    """
    path = Path(path)
    if path.suffix not in _BACKBONE_SUFFIXES:
        raise ValueError(f"unknown backbone file format {path.suffix!r} for {path}: use .safetensors or .pt")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    described = backbone_metadata(spec)
    if path.suffix == ".safetensors":
        blob = save(tensors, metadata=described)
        return atomic_write(path, lambda f: f.write(blob), check=check)
    state: Any = OrderedDict(tensors)
    state._metadata = OrderedDict(
        {"": dict(described)}
    )  # torch keeps a module's version here; load_state_dict ignores the rest
    return atomic_write(path, lambda f: torch.save(state, f), check=check)


def read_tensor_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a ``.safetensors`` or ``torch.save`` file holds, read safely (no pickled code): tensors by name, or
    whatever plain data ``torch.load(weights_only=True)`` returns (a state dict, a training checkpoint, ...)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no backbone file at {path}: check the path")
    try:
        if _is_safetensors(path):
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(
            f"{path} is truncated or not a backbone file ({type(err).__name__}): {_first_line(err)}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (it holds a {type(state).__name__})")
    return state


def _is_safetensors(path: Path) -> bool:
    """By the suffix; a file named otherwise (a temporary file being checked) by its content: ``torch.save``
    writes a zip archive, safetensors does not."""
    if path.suffix in (".safetensors", ".pt", ".pth"):
        return path.suffix == ".safetensors"
    return not zipfile.is_zipfile(path)


def read_backbone_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a backbone file (:func:`write_backbone`, or any plain state-dict file), by name."""
    path = Path(path)
    state = read_tensor_file(path)
    if state.get("format") == FORMAT:
        raise CheckpointError(
            f"{path} is a training checkpoint, not a backbone file; load it with vicreg.load_backbone({str(path)!r}) "
            "or export its backbone with vicreg export"
        )
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a backbone file: it holds {', '.join(list(state)[:5]) or 'nothing'}")
    return dict(state)


def read_backbone_spec(path: str | os.PathLike[str]) -> EncoderSpec | None:
    """The encoder description a backbone file carries (:func:`write_backbone`); ``None`` for a file without
    one (a foreign state dict, or a run's ``backbone.safetensors`` written before backbones carried it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no backbone file at {path}: check the path")
    if _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = (f.metadata() or {}).get(ENCODER_KEY)
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is truncated or not a backbone file ({type(err).__name__}): {err}") from err
    else:
        described = getattr(read_tensor_file(path), "_metadata", None) or {}
        stored = described.get("", {}).get(ENCODER_KEY) if isinstance(described, Mapping) else None
    if stored is None:
        return None
    try:
        return EncoderSpec.from_dict(json.loads(stored))
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: its encoder description cannot be read ({err})") from err
