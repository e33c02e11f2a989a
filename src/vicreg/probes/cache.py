"""An on-disk cache of frozen features, keyed by what determines them.

The key names the checkpoint file (resolved path, size, modification time), a digest of the exact images and
labels (so a changed data file never hits a stale entry), the normalisation, the precision and which encoder.
Entries are ``FOLDER/<digest>.pt`` written atomically and read back with ``torch.load(weights_only=True)``;
an unreadable or mismatching entry is recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vicreg.files import atomic_write

__all__ = ["cached", "file_identity", "tensor_digest"]


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A cheap identity of a file: resolved path, size and modification time in nanoseconds."""
    path = Path(path).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tensor_digest(*tensors: Tensor | None) -> str:
    """A BLAKE2b digest of the bytes, shapes and dtypes of ``tensors`` (``None`` counts as a marker)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _key_text(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def cached(folder: Path | None, key: Mapping[str, Any], compute: Callable[[], Tensor]) -> tuple[Tensor, bool]:
    """``compute()`` or its stored result for ``key`` under ``folder`` (``None``: no caching).

    Returns ``(tensor, hit)``.
    """
    if folder is None:
        return compute(), False
    text = _key_text(key)
    path = Path(folder) / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt"
    if path.is_file():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(entry, dict) and entry.get("key") == text and isinstance(entry.get("value"), Tensor):
                return entry["value"], True
        except Exception:  # a torn or foreign file: recompute and replace it
            pass
    value = compute()
    payload = {"key": text, "value": value.detach().cpu()}
    atomic_write(path, lambda f: torch.save(payload, f))
    return value, False
