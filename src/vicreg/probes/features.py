"""Frozen features of a whole dataset, batched, in eval mode: one function for every kind of input."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["extract_features", "normalize_rows", "raw_features"]


def normalize_rows(x: Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> Tensor:
    """``x`` as the encoder sees it: float32 on ``device``, ``(x - mean) / std`` per channel (axis 1).

    ``uint8`` images are first scaled to ``[0, 1]`` (``mean``/``std`` are then those of pixels in ``[0, 1]``);
    16-bit images (``uint16``/``int16``, :mod:`vicreg.data.bands`), float signals ``(N, C, T)`` and table rows
    ``(N, F)`` are used as they are (16-bit values are exact in float32). ``mean``/``std`` hold one value
    or one per channel / feature.
    """
    c = x.shape[1]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise ValueError(f"mean/std need 1 or {c} values, got {len(mean)} and {len(std)}")
    shape = (1, c) + (1,) * (x.ndim - 2)
    m = torch.tensor(mean, dtype=torch.float32, device=device).expand(c).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=device).expand(c).view(shape)
    x = x.to(device, non_blocking=True)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32)
    return (x - m) / s


def _check_rows(x: Tensor) -> None:
    ok = isinstance(x, Tensor) and (
        (x.dtype in (torch.uint8, torch.uint16, torch.int16) and x.ndim == 4)
        or (x.is_floating_point() and x.ndim in (2, 3, 4))
    )
    if not ok:
        desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            "expected uint8/uint16/int16 images (N, C, H, W), float signals (N, C, T) or float table rows (N, F), "
            f"got {desc}"
        )


@torch.no_grad()
def extract_features(
    embed: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    track: Callable[[Iterable[Tensor]], Iterable[Tensor]] | None = None,
) -> Tensor:
    """``embed`` applied to ``x`` normalised by :func:`normalize_rows`, in batches.

    ``x``: uint8 images ``(N, C, H, W)``, float signals ``(N, C, T)`` or float table rows ``(N, F)``, with the
    training data's ``mean``/``std``. Returns float32 features ``(N, D)`` on the CPU. The caller puts the module
    in eval mode. ``track`` wraps the iterable of row batches, e.g. ``Progress.batches(...)`` to show progress.
    """
    _check_rows(x)
    device = torch.device(device)
    out = []
    chunks: Iterable[Tensor] = x.split(batch_size) if x.shape[0] else ()
    for rows in track(chunks) if track is not None else chunks:
        batch = normalize_rows(rows, mean, std, device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            f = embed(batch)
        out.append(f.float().flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def raw_features(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The normalised input itself, flattened (the raw-pixel / raw-feature baseline), float32 on the CPU."""
    _check_rows(x)
    return normalize_rows(x, mean, std, "cpu").flatten(1)
