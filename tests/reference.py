"""Naive float64 reference implementations written straight from the paper's formulas.

Deliberately literal: full D x D covariance matrix, explicit off-diagonal mask, explicit loops where that is
clearer. Used only by the tests to check the fast implementations in ``vicreg``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ref_invariance(z_a: Tensor, z_b: Tensor) -> Tensor:
    z_a, z_b = z_a.double(), z_b.double()
    n, d = z_a.shape
    return ((z_a - z_b) ** 2).sum() / (n * d)


def ref_variance(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    z = z.double()
    n = z.shape[0]
    mean = z.sum(dim=0) / n
    var = ((z - mean) ** 2).sum(dim=0) / (n - 1)  # unbiased
    return torch.clamp(gamma - torch.sqrt(var + eps), min=0).mean()


def ref_covariance_matrix(z: Tensor) -> Tensor:
    z = z.double()
    n = z.shape[0]
    zc = z - z.sum(dim=0) / n
    return zc.T @ zc / (n - 1)


def ref_covariance(z: Tensor) -> Tensor:
    d = z.shape[1]
    cov = ref_covariance_matrix(z)
    off = ~torch.eye(d, dtype=torch.bool)
    return (cov[off] ** 2).sum() / d


def ref_vicreg(
    z_a: Tensor,
    z_b: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, invariance, variance, covariance) as in the paper / official code, in float64."""
    inv = ref_invariance(z_a, z_b)
    var = ref_variance(z_a, gamma, eps) / 2 + ref_variance(z_b, gamma, eps) / 2
    cov = ref_covariance(z_a) + ref_covariance(z_b)
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov, inv, var, cov


def ref_effective_rank(z: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe (Garrido et al. 2023): exp of the entropy of the L1-normalised singular values."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + eps
    return torch.exp(-(p * torch.log(p)).sum())
