"""Frozen features of a whole dataset, batched, in eval mode."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


@torch.no_grad()
def extract_features(
    embed: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """``embed`` applied to ``images`` (uint8 ``(N, C, H, W)``), normalised with ``mean``/``std``, in batches.

    Returns float32 features ``(N, F)`` on the CPU. The caller puts the module in eval mode.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    device = torch.device(device)
    c = images.shape[1]
    m = (
        torch.tensor(mean, dtype=torch.float32, device=device).expand(c).view(1, c, 1, 1)
        if len(mean) in (1, c)
        else None
    )
    s = torch.tensor(std, dtype=torch.float32, device=device).expand(c).view(1, c, 1, 1) if len(std) in (1, c) else None
    if m is None or s is None:
        raise ValueError(f"mean/std need 1 or {c} values, got {len(mean)} and {len(std)}")
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True).float().div_(255).sub_(m).div_(s)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            f = embed(x)
        out.append(f.float().flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
