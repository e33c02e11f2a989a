"""Frozen features of float data (signals ``(N, C, T)``, table rows ``(N, F)``), standardised, batched."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["extract_array_features"]


@torch.no_grad()
def extract_array_features(
    embed: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """``embed`` applied to ``(x - mean) / std`` (statistics per channel / feature, axis 1), in batches.

    Use the training data's statistics (:attr:`vicreg.data.FloatArrayDataset.mean` / ``std``), as the views do.
    Returns float32 features ``(N, D)`` on the CPU. The caller puts the module in eval mode.
    """
    if not isinstance(x, Tensor) or x.ndim not in (2, 3) or not x.is_floating_point():
        desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be float signals (N, C, T) or table rows (N, F), got {desc}")
    device = torch.device(device)
    c = x.shape[1]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise ValueError(f"mean/std need 1 or {c} values, got {len(mean)} and {len(std)}")
    shape = (1, c) + (1,) * (x.ndim - 2)
    m = torch.tensor(mean, dtype=torch.float32, device=device).expand(c).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=device).expand(c).view(shape)
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = (x[start : start + batch_size].to(device, torch.float32) - m) / s
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            f = embed(batch)
        out.append(f.float().flatten(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
