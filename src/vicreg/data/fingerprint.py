"""A fingerprint of a training set, cheap enough to take at every start: stored in the checkpoint, compared on
resume, so that a run resumed on other data is refused instead of silently changing its schedule.

:func:`data_fingerprint` reads the source's name, its number of rows, the shape and dtype of one row, and a
SHA-256 of a fixed sample of rows (64 by default, chosen by a seeded generator from the number of rows): rows
already in memory are hashed as bytes; image folders hash each sampled file's path relative to the folder, its
size and its first MiB (not decoded). A dataset of another kind (e.g. Hugging Face sources) gets its name and
row count only; its sample hash is ``None`` and is not compared.

The result is a plain dict of JSON types (``{"source", "rows", "shape", "dtype", "sample", "sample_hash"}``)
that goes into a checkpoint as is. :func:`fingerprint_changes` lists the fields that differ; the source's name
alone (the data moved, same rows) is not a change of data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATA_FIELDS", "SAMPLE_ROWS", "data_fingerprint", "fingerprint_changes", "sample_rows"]

SAMPLE_ROWS = 64
_FILE_HEAD = 1 << 20  # bytes of each sampled file that are hashed (with its size)
DATA_FIELDS = ("rows", "shape", "dtype", "sample_hash")
"""The fields that make data "the same": the source's name may differ (a moved folder, a renamed file)."""


def sample_rows(n: int, k: int = SAMPLE_ROWS, seed: int = 0) -> list[int]:
    """``min(k, n)`` distinct row indices in ``[0, n)``, sorted; a pure function of ``(n, k, seed)``."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=min(k, n), replace=False))


def _hash_rows(tensors: Sequence[Tensor], rows: list[int]) -> str:
    digest = hashlib.sha256()
    index = torch.tensor(rows, dtype=torch.int64)
    for t in tensors:
        picked = t.index_select(0, index.to(t.device)).cpu().contiguous()
        digest.update(str((tuple(picked.shape), str(picked.dtype))).encode())
        digest.update(picked.view(torch.uint8).numpy().tobytes() if picked.numel() else b"")
    return digest.hexdigest()


def _hash_files(root: Path, files: Sequence[str | os.PathLike[str]], rows: list[int]) -> str:
    digest = hashlib.sha256()
    for i in rows:
        path = Path(files[i])
        name = os.path.relpath(path, root) if path.is_absolute() == root.is_absolute() else str(path)
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            with open(path, "rb") as f:
                digest.update(str(os.fstat(f.fileno()).st_size).encode() + b"\0")
                digest.update(f.read(_FILE_HEAD))
        except OSError as err:  # an unreadable file is part of what the data is
            digest.update(f"unreadable: {err.strerror}".encode())
    return digest.hexdigest()


def _tensors(data: Any) -> list[Tensor] | None:
    """The row tensors of in-memory data: a tensor, a pair of tensors, or a dataset with ``rows``."""
    rows = getattr(data, "rows", data)
    if isinstance(rows, Tensor):
        return [rows]
    if isinstance(rows, tuple) and rows and all(isinstance(t, Tensor) for t in rows):  # TensorPair
        return list(rows)
    return None


def data_fingerprint(
    data: Any, *, sample: int = SAMPLE_ROWS, seed: int = 0, source: str | None = None
) -> dict[str, Any]:
    """The fingerprint of ``data`` (see the module doc).

    Args:
        data: an in-memory dataset (anything with a ``rows`` tensor: images, signals, tables), a bare tensor or
            a pair of tensors (two-modality pairs), an image folder source (``root``, ``files``, ``size``,
            ``channels``), or any sized dataset (name and length only).
        sample: rows hashed.
        seed: seed of the sampled rows (keep the default: fingerprints taken with other seeds differ).
        source: the name to record (default: the dataset's ``name`` or ``root``).
    """
    tensors = _tensors(data)
    if tensors is not None:
        n = int(tensors[0].shape[0])
        shape: list[Any] = [list(t.shape[1:]) for t in tensors] if len(tensors) > 1 else list(tensors[0].shape[1:])
        dtype = ",".join(str(t.dtype).removeprefix("torch.") for t in tensors)
        picked = sample_rows(n, sample, seed)
        digest: str | None = _hash_rows(tensors, picked)
        name = source or str(getattr(data, "name", "tensor"))
    elif hasattr(data, "files") and hasattr(data, "root"):  # an image folder: files decoded on the fly
        root = Path(data.root)
        n = len(data.files)
        shape = [int(getattr(data, "channels", 3)), int(data.size), int(data.size)]
        dtype = "uint8"
        picked = sample_rows(n, sample, seed)
        digest = _hash_files(root, data.files, picked)
        name = source or str(root)
    else:
        n, shape, dtype, picked, digest = len(data), [], "", [], None
        name = source or str(getattr(data, "name", getattr(data, "root", type(data).__name__)))
    return {"source": name, "rows": n, "shape": shape, "dtype": dtype, "sample": len(picked), "sample_hash": digest}


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, old, new)`` of every field of :data:`DATA_FIELDS` that differs (a ``None`` sample hash on
    either side is not compared: that kind of data is not hashed)."""
    changed = []
    for key in DATA_FIELDS:
        a, b = old.get(key), new.get(key)
        if key == "sample_hash" and (a is None or b is None):
            continue
        if a != b:
            changed.append((key, a, b))
    return changed
