"""Collapse diagnostics for a batch of embeddings: is each dimension alive, are they decorrelated, how many
directions does the batch really use?

Collapse shows as the per-dimension standard deviation going to 0 (complete collapse) or as the effective rank
dropping far below the dimension (dimensional collapse) while the std stays up. All functions take an
``(N, D)`` tensor and work under ``torch.no_grad``; :func:`collapse_stats` returns plain floats for logging,
with a single device-to-host transfer.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "collapse_stats",
    "covariance_spectrum",
    "effective_rank",
    "mean_abs_offdiag_corr",
    "per_dim_std",
    "spectral_effective_rank",
]


def _check(z: Tensor) -> Tensor:
    if z.ndim != 2:
        raise ValueError(f"expected a 2-D (batch, dim) tensor of embeddings, got shape {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"collapse diagnostics need at least 2 samples, got a batch of {z.shape[0]}")
    return z.detach().float()


@torch.no_grad()
def per_dim_std(z: Tensor) -> Tensor:
    """Unbiased standard deviation of each dimension over the batch, shape ``(D,)``."""
    return _check(z).std(dim=0, unbiased=True)


@torch.no_grad()
def mean_abs_offdiag_corr(z: Tensor, chunk: int = 1024) -> Tensor:
    """Mean of ``|corr(z_i, z_j)|`` over the ``D (D - 1)`` ordered pairs ``i != j`` (0 = decorrelated).

    Dead dimensions (std below 1e-6 of their root-mean-square value: constant up to rounding) count as
    uncorrelated with everything. The ``D x D`` correlation matrix is
    built ``chunk`` rows at a time, so memory stays at ``chunk x D`` whatever ``D`` is.
    """
    z = _check(z)
    d = z.shape[1]
    if d < 2:
        return torch.zeros((), device=z.device)
    zc = z - z.mean(dim=0)
    norm = zc.norm(dim=0)
    alive = norm > 1e-6 * z.norm(dim=0)
    zn = torch.where(alive, zc / torch.where(alive, norm, torch.ones_like(norm)), torch.zeros_like(zc))
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for start in range(0, d, chunk):
        block = (zn[:, start : start + chunk].T @ zn).abs()  # (chunk, D)
        total += block.sum(dtype=torch.float64)
        total -= block.diagonal(offset=start).sum(dtype=torch.float64)
    return (total / (d * (d - 1))).float()


@torch.no_grad()
def effective_rank(z: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe (Garrido et al., ICML 2023): ``exp(-sum_k p_k log p_k)`` with ``p = sigma / ||sigma||_1 + eps``.

    ``sigma`` are the singular values of the (uncentred) embedding matrix. Between 1 (everything on one line)
    and ``min(N, D)`` (all singular values equal). A zero matrix gives 1 by convention.
    """
    z = _check(z)
    s = torch.linalg.svdvals(z)
    total = s.sum()
    p = s / torch.where(total > 0, total, torch.ones_like(total)) + eps
    rank = torch.exp(-(p * torch.log(p)).sum())
    return torch.where(total > 0, rank, torch.ones_like(rank))


@torch.no_grad()
def collapse_stats(z: Tensor, gamma: float = 1.0) -> dict[str, float]:
    """All diagnostics of one batch as floats: cheap enough to log every few hundred steps.

    Keys: ``std_mean``, ``std_min``, ``frac_std_below_gamma`` (the share of dimensions the variance hinge is
    still pushing up), ``mean_abs_corr``, ``effective_rank`` and ``effective_rank_ratio`` (divided by
    ``min(N, D)``, so 1 is full rank).
    """
    z = _check(z)
    std = per_dim_std(z)
    rank = effective_rank(z)
    values = torch.stack(
        [
            std.mean(),
            std.min(),
            (std < gamma).float().mean(),
            mean_abs_offdiag_corr(z),
            rank,
            rank / min(z.shape),
        ]
    ).tolist()  # one host sync for everything
    keys = (
        "std_mean",
        "std_min",
        "frac_std_below_gamma",
        "mean_abs_corr",
        "effective_rank",
        "effective_rank_ratio",
    )
    return dict(zip(keys, values, strict=True))


@torch.no_grad()
def covariance_spectrum(z: Tensor) -> Tensor:
    """Eigenvalues of the covariance matrix of ``z`` ``(N, D)`` (float64, largest first, clamped at 0)."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) matrix of embeddings, got {tuple(z.shape)}")
    z = z.double()
    z = z - z.mean(0)
    cov = z.T @ z / (z.shape[0] - 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def spectral_effective_rank(eigenvalues: Tensor) -> float:
    """Effective rank of a covariance spectrum: ``exp(entropy(p))`` with ``p = sqrt(l) / sum(sqrt(l))``.

    ``sqrt(l)`` are the singular values of the centred embeddings (up to a common factor), so this is RankMe
    (:func:`effective_rank`) of the centred embeddings. ``k`` equal eigenvalues and zeros
    give ``k``; a zero spectrum gives 1.
    """
    s = eigenvalues.double().clamp_min(0).sqrt()
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
