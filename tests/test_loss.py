"""The loss against the naive float64 reference of tests/reference.py, and its properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import (
    ref_covariance,
    ref_covariance_matrix,
    ref_invariance,
    ref_variance,
    ref_vicreg,
)
from vicreg import (
    VICRegLoss,
    covariance_term,
    invariance_term,
    variance_covariance_loss,
    variance_term,
    vicreg_loss,
)
from vicreg.loss import _sharded_uses_gram

# (N, D): N < D (Gram path), N = D, N > D (D x D path).
SHAPES = [(8, 32), (16, 16), (64, 12), (3, 5), (2, 1)]


def _pair(n: int, d: int, scale: float = 1.0, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    # correlated dimensions and a non-zero mean so every term is active
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    z_a = (base @ (torch.eye(d, dtype=torch.float64) + mix) + 0.3) * scale
    z_b = (z_a + 0.5 * scale * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)
    return z_a.to(dtype), z_b


def _rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_terms_match_reference(n: int, d: int) -> None:
    z_a, z_b = _pair(n, d)
    out = vicreg_loss(z_a, z_b)
    loss, inv, var, cov = ref_vicreg(z_a, z_b)
    _rel_close(out.invariance, inv, 1e-5, 1e-7)
    _rel_close(out.variance, var, 1e-5, 1e-7)
    _rel_close(out.covariance, cov, 1e-5, 1e-7)
    _rel_close(out.loss, loss, 1e-5, 1e-7)
    assert out.loss.dtype == torch.float32
    _rel_close(invariance_term(z_a, z_b), ref_invariance(z_a, z_b), 1e-5, 1e-7)
    _rel_close(variance_term(z_a), ref_variance(z_a), 1e-5, 1e-7)
    _rel_close(covariance_term(z_a), ref_covariance(z_a), 1e-5, 1e-7)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_gradients_match_reference(n: int, d: int) -> None:
    z_a, z_b = _pair(n, d, seed=1)
    a32, b32 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    vicreg_loss(a32, b32).loss.backward()
    a64, b64 = z_a.double().requires_grad_(), z_b.double().requires_grad_()
    ref_vicreg(a64, b64)[0].backward()
    assert a32.grad is not None and b32.grad is not None
    scale = a64.grad.abs().max() + b64.grad.abs().max()
    # elementwise: relative 1e-5, with an absolute floor relative to the largest gradient entry
    _rel_close(a32.grad, a64.grad, 1e-5, 1e-6 * float(scale))
    _rel_close(b32.grad, b64.grad, 1e-5, 1e-6 * float(scale))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 48),
    d=st.integers(1, 48),
    log_scale=st.floats(-2.0, 2.0),
    seed=st.integers(0, 2**16),
    coeffs=st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(0, 5)),
)
def test_hypothesis_values_and_gradients(n, d, log_scale, seed, coeffs) -> None:
    z_a, z_b = _pair(n, d, scale=10.0**log_scale, seed=seed)
    sim, std, cov = coeffs
    a32, b32 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    out = vicreg_loss(a32, b32, sim_coeff=sim, std_coeff=std, cov_coeff=cov)
    out.loss.backward()
    a64, b64 = z_a.double().requires_grad_(), z_b.double().requires_grad_()
    ref = ref_vicreg(a64, b64, sim, std, cov)
    ref[0].backward()
    # each term relative 1e-5; the absolute floor of a term is 1e-6 of its natural scale (for covariance
    # ||C||_F^2 / D, what float32 can resolve when the off-diagonal part is a tiny share of it)
    ref = tuple(t.detach() for t in ref)
    c_a, c_b = ref_covariance_matrix(z_a), ref_covariance_matrix(z_b)
    cov_scale = float((c_a.square().sum() + c_b.square().sum()) / d)
    floors = (
        1e-6 * (sim * float(ref[1]) + std + cov * cov_scale) + 1e-9,
        1e-6 * float(ref[1]) + 1e-12,
        1e-7,
        1e-6 * cov_scale + 1e-12,
    )
    for mine, theirs, floor in zip(out, ref, floors, strict=True):
        _rel_close(mine.detach(), theirs.detach(), 1e-5, floor)
    for mine, theirs in ((a32.grad, a64.grad), (b32.grad, b64.grad)):
        assert mine is not None and theirs is not None
        floor = 1e-6 * float(a64.grad.abs().max() + b64.grad.abs().max()) + 1e-12
        _rel_close(mine, theirs, 1e-5, floor)


def test_large_squares_stay_accurate_in_float32() -> None:
    """Sums of large squares: the Gram path at the paper's width against float64."""
    z_a, z_b = _pair(64, 2048, scale=30.0, seed=3)
    out = vicreg_loss(z_a, z_b)
    ref = ref_vicreg(z_a, z_b)
    _rel_close(out.covariance, ref[3], 1e-5)
    z_a, z_b = _pair(512, 96, scale=0.01, seed=4)  # D x D path, tiny values
    _rel_close(vicreg_loss(z_a, z_b).covariance, ref_vicreg(z_a, z_b)[3], 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    """bf16/fp16 inputs: the loss is computed in float32 from the rounded inputs, so it equals the float64
    reference *on the same rounded values* to float32 accuracy (relative 1e-5). Against the unrounded
    float32 values the difference is only the input rounding (bf16: 8-bit mantissa, relative ~4e-3)."""
    z_a, z_b = _pair(32, 64, seed=5)
    a16, b16 = z_a.to(dtype).requires_grad_(), z_b.to(dtype).requires_grad_()
    out = vicreg_loss(a16, b16)
    assert all(t.dtype == torch.float32 for t in out)
    ref = ref_vicreg(a16.detach(), b16.detach())
    for mine, theirs in zip(out, ref, strict=True):
        _rel_close(mine, theirs, 1e-5, 1e-7)
    out.loss.backward()
    assert a16.grad is not None and a16.grad.dtype == dtype
    # against the unrounded inputs: the bound stated for bf16 (2^-8 relative per input, ~1e-2 on the loss)
    _rel_close(out.loss, ref_vicreg(z_a, z_b)[0], 2e-2)


def test_autocast_is_disabled_inside() -> None:
    z_a, z_b = _pair(16, 32, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vicreg_loss(z_a, z_b)
    assert out.loss.dtype == torch.float32
    _rel_close(out.loss, ref_vicreg(z_a, z_b)[0], 1e-5)


def test_symmetric_in_the_two_branches() -> None:
    z_a, z_b = _pair(24, 40, seed=7)
    ab, ba = vicreg_loss(z_a, z_b), vicreg_loss(z_b, z_a)
    for x, y in zip(ab, ba, strict=True):
        torch.testing.assert_close(x, y)


def test_identical_views_have_zero_invariance() -> None:
    z, _ = _pair(16, 8, seed=8)
    out = vicreg_loss(z, z.clone())
    assert float(out.invariance) == 0.0
    # with sim_coeff = 0 nothing changes either
    torch.testing.assert_close(out.loss, vicreg_loss(z, z, sim_coeff=0.0).loss)


def test_constant_batch_gives_full_variance_penalty() -> None:
    """A collapsed batch: every std is 0, so each branch's hinge is gamma - sqrt(eps)."""
    z = torch.full((10, 6), 3.0)
    out = vicreg_loss(z, z.clone(), gamma=1.0, eps=1e-4)
    torch.testing.assert_close(out.variance, torch.tensor(1.0 - math.sqrt(1e-4)))
    assert float(out.covariance) == 0.0
    assert float(out.invariance) == 0.0


def test_whitened_batch_has_no_covariance_penalty() -> None:
    """Whitened columns (orthogonal after centring, unit variance): covariance ~ 0 and variance hinge ~ 0."""
    n, d = 64, 16
    g = torch.Generator().manual_seed(9)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    q, _ = torch.linalg.qr(x)  # orthonormal, centred columns
    z = (q * math.sqrt(n - 1)).float()  # unit unbiased variance
    out = vicreg_loss(z, z.clone())
    assert float(out.covariance) < 1e-9
    # std is exactly 1, so relu(1 - sqrt(1 + eps)) = 0
    assert float(out.variance) == 0.0


def test_spread_batch_has_no_variance_penalty() -> None:
    z = torch.randn(256, 8, generator=torch.Generator().manual_seed(10)) * 5
    assert float(variance_term(z)) == 0.0


def test_covariance_scales_with_fourth_power() -> None:
    z, _ = _pair(20, 30, seed=11)
    torch.testing.assert_close(covariance_term(2 * z), 16 * covariance_term(z), rtol=1e-5, atol=0)


def test_covariance_is_shift_invariant() -> None:
    z, _ = _pair(20, 30, seed=12)
    torch.testing.assert_close(covariance_term(z + 100.0), covariance_term(z), rtol=1e-4, atol=1e-6)


def test_module_equals_function() -> None:
    z_a, z_b = _pair(12, 20, seed=13)
    crit = VICRegLoss(sim_coeff=10.0, std_coeff=5.0, cov_coeff=2.0, gamma=0.5, eps=1e-3)
    out = crit(z_a, z_b)
    ref = vicreg_loss(z_a, z_b, sim_coeff=10.0, std_coeff=5.0, cov_coeff=2.0, gamma=0.5, eps=1e-3)
    for x, y in zip(out, ref, strict=True):
        torch.testing.assert_close(x, y)
    assert "sim_coeff=10.0" in repr(crit)


def test_weighted_total_is_the_weighted_sum() -> None:
    z_a, z_b = _pair(12, 20, seed=14)
    out = vicreg_loss(z_a, z_b, sim_coeff=3.0, std_coeff=7.0, cov_coeff=0.5)
    torch.testing.assert_close(out.loss, 3.0 * out.invariance + 7.0 * out.variance + 0.5 * out.covariance)


def test_variance_covariance_regulariser() -> None:
    z, _ = _pair(16, 24, seed=15)
    reg = variance_covariance_loss(z, std_coeff=25.0, cov_coeff=1.0)
    expected = 25.0 * ref_variance(z) + ref_covariance(z)
    _rel_close(reg, expected, 1e-5)
    zg = z.clone().requires_grad_()
    variance_covariance_loss(zg).backward()
    assert zg.grad is not None and torch.isfinite(zg.grad).all()


@pytest.mark.parametrize(
    ("z_a", "z_b", "match"),
    [
        (torch.randn(1, 4), torch.randn(1, 4), "at least 2"),
        (torch.randn(0, 4), torch.randn(0, 4), "at least 2"),
        (torch.randn(4, 3), torch.randn(4, 5), "same shape"),
        (torch.randn(4, 3), torch.randn(5, 3), "same shape"),
        (torch.randn(4, 3, 2), torch.randn(4, 3, 2), "2-D"),
        (torch.randn(4), torch.randn(4), "2-D"),
        (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), "floating-point"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.randn(2, 2), "NaN or infinite"),
        (torch.randn(2, 2), torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN or infinite"),
    ],
)
def test_bad_input_raises_clear_error(z_a, z_b, match) -> None:
    with pytest.raises(ValueError, match=match):
        vicreg_loss(z_a, z_b)


def test_bad_coefficients_raise() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="sim_coeff"):
        vicreg_loss(z, z, sim_coeff=-1.0)
    with pytest.raises(ValueError, match="eps"):
        vicreg_loss(z, z, eps=0.0)
    with pytest.raises(ValueError, match="gamma"):
        VICRegLoss(gamma=float("nan"))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        vicreg_loss([[1.0, 2.0]], z)  # type: ignore[arg-type]


def test_check_finite_can_be_disabled() -> None:
    z = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    out = vicreg_loss(z, z, check_finite=False)
    assert not torch.isfinite(out.loss)


def test_gather_is_a_no_op_in_one_process() -> None:
    z_a, z_b = _pair(8, 6, seed=16)
    for x, y in zip(vicreg_loss(z_a, z_b, gather=True), vicreg_loss(z_a, z_b, gather=False), strict=True):
        torch.testing.assert_close(x, y)


def test_loss_decreases_under_gradient_descent_on_embeddings() -> None:
    """Optimising free embeddings with the full loss lifts the std and lowers the covariance."""
    g = torch.Generator().manual_seed(17)
    z_a = (0.01 * torch.randn(64, 16, generator=g)).requires_grad_()
    z_b = (0.01 * torch.randn(64, 16, generator=g)).requires_grad_()
    opt = torch.optim.Adam([z_a, z_b], lr=0.02)
    first = None
    for _ in range(200):
        opt.zero_grad()
        out = vicreg_loss(z_a, z_b)
        first = float(out.loss.detach()) if first is None else first
        out.loss.backward()
        opt.step()
    assert float(out.loss.detach()) < 0.2 * first
    assert float(out.variance.detach()) < 0.05


@pytest.mark.parametrize(("n", "d"), [(3, 7), (7, 3), (5, 5), (2, 1)])
def test_offdiagonal_backward_passes_gradcheck(n: int, d: int) -> None:
    """The hand-written backward of the off-diagonal sum, both forms, against finite differences."""
    from vicreg.loss import _OffDiagSqSum

    z = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n * 10 + d))
    zc = (z - z.mean(0)).requires_grad_()
    assert torch.autograd.gradcheck(_OffDiagSqSum.apply, (zc,))


def test_sharded_is_the_plain_loss_in_one_process() -> None:
    z_a, z_b = _pair(8, 32)
    plain, sharded = vicreg_loss(z_a, z_b), vicreg_loss(z_a, z_b, gather="sharded")
    for a, b in zip(plain, sharded, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(variance_covariance_loss(z_a, gather="sharded"), variance_covariance_loss(z_a))
    assert VICRegLoss(gather="sharded")(z_a, z_b).loss == plain.loss


@pytest.mark.parametrize("gather", ["gather", "Sharded", 1, None, 0.5])
def test_bad_gather_raises(gather) -> None:
    z_a, z_b = _pair(4, 8)
    with pytest.raises(ValueError, match="gather must be True"):
        vicreg_loss(z_a, z_b, gather=gather)
    with pytest.raises(ValueError, match="gather must be True"):
        variance_covariance_loss(z_a, gather=gather)
    with pytest.raises(ValueError, match="gather must be True"):
        VICRegLoss(gather=gather)


@pytest.mark.parametrize(("n", "world", "d", "gram"), [(64, 32, 8192, True), (4096, 2, 512, False), (8, 2, 4, False)])
def test_sharded_form_choice(n: int, world: int, d: int, gram: bool) -> None:
    """Paper shapes (N = 2048 < D = 8192) take the row-block Gram; many rows and a narrow D the D x D form."""
    assert _sharded_uses_gram(n, world, d) is gram
