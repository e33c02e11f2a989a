"""Label-free measures (vicreg.probes.label_free) against naive numpy references and on their defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from vicreg.probes.label_free import (
    CRITERIA,
    LIDAR_DELTA,
    LIDAR_EPS,
    RANKME_EPS,
    alpha_req,
    label_free_scores,
    lidar,
    linear_cka,
    moved_from_init,
    rankme,
    selection_score,
)


def _entropy_rank(values: np.ndarray, eps: float) -> float:
    p = values / np.abs(values).sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def _rankme_np(z: np.ndarray) -> float:
    return _entropy_rank(np.linalg.svd(z, compute_uv=False), RANKME_EPS)


def _lidar_np(e: np.ndarray) -> float:
    """Thilak et al. 2024 written out with loops, eigenvalues from scipy's generalised symmetric solver."""
    n, q, d = e.shape
    mu_i = e.mean(axis=1)
    mu = mu_i.mean(axis=0)
    s_b = sum(np.outer(m - mu, m - mu) for m in mu_i) / (n - 1)
    s_w = sum(np.outer(e[i, j] - mu_i[i], e[i, j] - mu_i[i]) for i in range(n) for j in range(q)) / (n * (q - 1))
    s_w = s_w + LIDAR_DELTA * np.eye(d)
    lam = np.clip(scipy.linalg.eigh(s_b, s_w, eigvals_only=True), 0, None)
    return _entropy_rank(lam, LIDAR_EPS)


def _orthonormal(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    return q


# ------------------------------------------------------------------------------------------------ RankMe


def test_rankme_matches_the_numpy_reference() -> None:
    z = torch.randn(300, 40, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 40)
    assert rankme(z) == pytest.approx(_rankme_np(z.double().numpy()), rel=1e-9)


def test_rankme_of_an_isotropic_gaussian_is_about_its_dimension() -> None:
    z = torch.randn(20_000, 32, generator=torch.Generator().manual_seed(1))
    assert 0.97 * 32 < rankme(z) <= 32


@pytest.mark.parametrize("k", [1, 5, 17])
def test_rankme_of_a_rank_k_matrix_is_k(k: int) -> None:
    # equal singular values on k directions: exactly k; Gaussian factors: a little below k, never above
    exact = _orthonormal(500, k, 0) @ _orthonormal(64, k, 1).T * 3.0
    assert rankme(exact) == pytest.approx(k, rel=1e-3)  # eps adds ~1e-4 per zero singular value
    g = torch.Generator().manual_seed(2)
    random = torch.randn(5000, k, generator=g) @ torch.randn(k, 64, generator=g)
    assert 0.8 * k <= rankme(random) <= k * (1 + 1e-3)


def test_rankme_accumulates_in_float64() -> None:
    """A float32 input with a large common offset: the measure works on the float64 copy of the same numbers."""
    z = (torch.randn(400, 16, generator=torch.Generator().manual_seed(3)) * 1e-3 + 1e4).float()
    assert rankme(z) == pytest.approx(_rankme_np(z.double().numpy()), rel=1e-9)


def test_bad_inputs_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rankme(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="diverged"):
        rankme(torch.tensor([[1.0, math.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2 augmented copies"):
        lidar(torch.zeros(5, 1, 3))
    with pytest.raises(ValueError, match="criterion"):
        selection_score({"rankme": 1.0}, "accuracy")


# ------------------------------------------------------------------------------------------------ LiDAR


def test_lidar_matches_the_numpy_reference() -> None:
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(30, 1, 12, generator=g) * torch.linspace(0.2, 2, 12)
    e = centres + 0.3 * torch.randn(30, 5, 12, generator=g)
    assert lidar(e) == pytest.approx(_lidar_np(e.double().numpy()), rel=1e-7)


def test_lidar_of_collapsed_representations_is_low() -> None:
    g = torch.Generator().manual_seed(5)
    n, q, d = 200, 6, 16
    separated = torch.randn(n, 1, d, generator=g) + 0.05 * torch.randn(n, q, d, generator=g)
    assert lidar(separated) > 0.9 * d  # each sample its own place, copies together: full LDA rank
    complete = torch.ones(n, q, d)  # every input to one point
    assert lidar(complete) == pytest.approx(1.0)
    dimensional = separated.clone()
    dimensional[..., 2:] = 0.0  # two live dimensions
    assert lidar(dimensional) < 2.1
    # LiDAR counts the directions in which samples differ more than their copies do; RankMe counts them all
    partly = separated.clone()
    partly[..., 4:] = 3.0 * torch.randn(n, q, d - 4, generator=g)  # 12 directions of augmentation noise only
    assert 3.9 < lidar(partly) < 4.5
    assert rankme(partly.reshape(n * q, d)) > 0.9 * d


def test_lidar_is_bounded_by_the_number_of_surrogate_classes() -> None:
    e = torch.randn(5, 4, 32, generator=torch.Generator().manual_seed(6))
    assert lidar(e) <= 4 + 1e-3  # S_b has rank n - 1


# ------------------------------------------------------------------------------------------------ alpha-ReQ


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_the_exponent_of_a_power_law(alpha: float) -> None:
    d, n = 48, 2000
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
    u = _orthonormal(n, d, 7)
    u = u - u.mean(0)  # centred columns, still orthogonal up to rounding after re-orthonormalising
    u, _ = torch.linalg.qr(u)
    exact = u @ torch.diag((lam * (n - 1)).sqrt()) @ _orthonormal(d, d, 8).T
    assert alpha_req(exact) == pytest.approx(alpha, abs=1e-6)
    noisy = torch.randn(50_000, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * lam.sqrt()
    assert alpha_req(noisy, last=32) == pytest.approx(alpha, abs=0.05)


def test_alpha_req_of_a_collapsed_representation_is_nan() -> None:
    assert math.isnan(alpha_req(torch.ones(10, 4)))


# ------------------------------------------------------------------------------------------------ CKA, init


def test_linear_cka_matches_the_numpy_reference_and_ignores_rotation_and_scale() -> None:
    g = torch.Generator().manual_seed(10)
    a = torch.randn(200, 8, generator=g, dtype=torch.float64)
    b = a @ torch.randn(8, 6, generator=g, dtype=torch.float64) + 0.5 * torch.randn(200, 6, generator=g)
    x, y = a.numpy() - a.numpy().mean(0), b.numpy() - b.numpy().mean(0)
    ref = np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    assert linear_cka(a, b) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(a, 3.0 * a @ _orthonormal(8, 8, 11)) == pytest.approx(1.0, rel=1e-10)
    assert linear_cka(a, torch.randn(200, 8, generator=g)) < 0.2


def test_moved_from_init_gives_ratios_of_the_shared_measures() -> None:
    got = moved_from_init({"rankme": 30.0, "lidar": 10.0, "alpha_req": 1.0}, {"rankme": 60.0, "lidar": 0.0})
    assert got == {"rankme_vs_init": 0.5}


def test_selection_scores_are_higher_for_better() -> None:
    assert selection_score({"alpha_req": 1.1}, "alpha_req") > selection_score({"alpha_req": 2.0}, "alpha_req")
    assert selection_score({"rankme": 10.0, "cka_to_init": 0.25}, "rankme_moved") == pytest.approx(7.5)
    assert math.isnan(selection_score({}, "lidar"))
    assert set(CRITERIA) >= {"lidar", "rankme"}


# ------------------------------------------------------------------------------------------------ the entry point


def _toy_encoder(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8)).double()


def _jitter(rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair of views: noise drawn from the generator, as the library's views do."""
    noise = torch.randn(2, *rows.shape, generator=generator, dtype=rows.dtype)
    return rows + 0.1 * noise[0], rows + 0.1 * noise[1]


def test_label_free_scores_are_deterministic_for_a_seeded_generator() -> None:
    sample = torch.randn(64, 10, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    enc = _toy_encoder(0)
    first = label_free_scores(enc, sample, _jitter, torch.Generator().manual_seed(3), copies=5, batch_size=20)
    again = label_free_scores(enc, sample, _jitter, torch.Generator().manual_seed(3), copies=5, batch_size=20)
    other = label_free_scores(enc, sample, _jitter, torch.Generator().manual_seed(4), copies=5, batch_size=20)
    assert first == again
    assert first["lidar"] != other["lidar"] and first["rankme"] == other["rankme"]
    assert set(first) == {"rankme", "alpha_req", "lidar", "rows", "copies"}
    assert first["rankme"] == pytest.approx(rankme(enc(sample)), rel=1e-6)


def test_label_free_scores_compare_with_the_random_init_on_the_same_views() -> None:
    sample = torch.randn(64, 10, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    enc = _toy_encoder(1)
    same = label_free_scores(enc, sample, _jitter, torch.Generator().manual_seed(0), copies=4, init_encode=enc)
    assert same["lidar_init"] == same["lidar"]  # the generator was rewound: the same copies
    assert same["rankme_vs_init"] == pytest.approx(1.0) and same["cka_to_init"] == pytest.approx(1.0)
    other = label_free_scores(
        enc, sample, _jitter, torch.Generator().manual_seed(0), copies=4, init_encode=_toy_encoder(2)
    )
    assert other["cka_to_init"] < 0.99
    assert other["lidar"] == same["lidar"]


def test_label_free_scores_prepare_and_limit_the_lidar_rows() -> None:
    sample = torch.randint(0, 255, (40, 10), generator=torch.Generator().manual_seed(14)).to(torch.uint8)
    seen: list[int] = []

    def views(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(rows.shape[0])
        return rows.double() / 255 + 0.01 * torch.randn(rows.shape, generator=generator, dtype=torch.float64)

    out = label_free_scores(
        _toy_encoder(3),
        sample,
        views,
        torch.Generator().manual_seed(0),
        prepare=lambda x: x.double() / 255,
        copies=3,
        lidar_rows=16,
    )
    assert seen == [16, 16, 16] and out["rows"] == 40 and out["copies"] == 3
