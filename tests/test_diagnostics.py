"""Collapse diagnostics on constructed inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from tests.reference import ref_effective_rank
from vicreg.diagnostics import collapse_stats, effective_rank, mean_abs_offdiag_corr, per_dim_std


def _orthonormal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_collapsed_batch() -> None:
    z = torch.ones(32, 16) * 0.7
    stats = collapse_stats(z)
    assert stats["std_mean"] == 0.0 and stats["std_min"] == 0.0
    assert stats["frac_std_below_gamma"] == 1.0
    assert stats["mean_abs_corr"] == 0.0  # zero-variance dimensions count as uncorrelated
    assert stats["effective_rank"] == pytest.approx(1.0, abs=1e-4)


def test_zero_batch_has_rank_one() -> None:
    assert float(effective_rank(torch.zeros(8, 4))) == 1.0


def test_isotropic_batch() -> None:
    """Orthonormal, centred columns scaled to unit variance: std 1, correlations 0, full effective rank."""
    n, d = 64, 16
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))
    z = (q * math.sqrt(n - 1)).float()
    stats = collapse_stats(z, gamma=0.5)
    assert stats["std_mean"] == pytest.approx(1.0, abs=1e-5)
    assert stats["std_min"] == pytest.approx(1.0, abs=1e-5)
    assert stats["frac_std_below_gamma"] == 0.0
    assert stats["mean_abs_corr"] == pytest.approx(0.0, abs=1e-5)
    assert stats["effective_rank"] == pytest.approx(d, rel=1e-4)
    assert stats["effective_rank_ratio"] == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_rank_k_batch(k: int) -> None:
    """k equal singular values and the rest zero: effective rank k."""
    n, d = 40, 12
    u = _orthonormal(n, k, seed=2)
    v = _orthonormal(d, k, seed=3)
    z = (u @ v.T * 5.0).float()
    assert float(effective_rank(z)) == pytest.approx(k, rel=1e-4)
    torch.testing.assert_close(effective_rank(z).double(), ref_effective_rank(z), rtol=1e-4, atol=0)


def test_effective_rank_of_known_spectrum() -> None:
    """Singular values (4, 2, 1, 1): p = (.5, .25, .125, .125), entropy = 1.75 log 2."""
    s = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    z = (_orthonormal(10, 4, seed=4) * s @ _orthonormal(4, 4, seed=5).T).float()
    assert float(effective_rank(z)) == pytest.approx(math.exp(1.75 * math.log(2)), rel=1e-4)


def test_perfectly_correlated_dimensions() -> None:
    t = torch.randn(50, 1, generator=torch.Generator().manual_seed(6))
    z = torch.cat([t, -2 * t, 3 * t + 1], dim=1)
    assert float(mean_abs_offdiag_corr(z)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
def test_correlation_matches_dense_matrix_for_any_chunk(chunk: int) -> None:
    z = torch.randn(30, 9, generator=torch.Generator().manual_seed(7)) @ torch.randn(
        9, 9, generator=torch.Generator().manual_seed(8)
    )
    corr = torch.corrcoef(z.T.double())
    off = ~torch.eye(9, dtype=torch.bool)
    expected = corr[off].abs().mean()
    assert float(mean_abs_offdiag_corr(z, chunk=chunk)) == pytest.approx(float(expected), rel=1e-5)


def test_per_dim_std_is_unbiased() -> None:
    z = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    torch.testing.assert_close(per_dim_std(z), torch.tensor([math.sqrt(2.0), 0.0]))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        collapse_stats(torch.randn(4))
    with pytest.raises(ValueError, match="at least 2"):
        collapse_stats(torch.randn(1, 4))


def test_does_not_track_gradients() -> None:
    z = torch.randn(8, 4, requires_grad=True)
    assert not effective_rank(z).requires_grad
    assert isinstance(collapse_stats(z)["std_mean"], float)
