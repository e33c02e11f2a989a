"""Numerics: bf16 training of the tiny configuration stays finite for hundreds of steps, and the float32
loss (and its gradient) equals float64 on realistic embeddings, up to the paper's 8192 dimensions.

The float64 side is the naive reference of ``tests/reference.py`` (a full D x D covariance) where that is
affordable (D <= 2048) and the same formulas run in float64 at D = 8192 (the naive reference costs ~17 s
there on 2 cores; ``tests/test_loss.py`` shows both float64 paths agree).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import env_int, tiny_npz
from tests.reference import ref_vicreg
from vicreg import vicreg_loss
from vicreg.checkpoint import load_checkpoint
from vicreg.config import ModelConfig, OptimConfig, TrainConfig, ViewsConfig
from vicreg.models import Expander
from vicreg.train import train

pytestmark = pytest.mark.reliability

BF16_STEPS = env_int("VICREG_RELIABILITY_BF16_STEPS", 300)


@pytest.mark.slow
def test_bf16_training_stays_finite(tmp_path: Path) -> None:
    """A few hundred bf16 steps (CPU autocast) of the tiny configuration at the paper's learning rate."""
    cfg = TrainConfig(
        out=tmp_path / "run",
        data=str(tiny_npz(tmp_path / "d.npz", n=64)),
        epochs=math.ceil(BF16_STEPS / 8),
        max_steps=BF16_STEPS,
        batch_size=8,
        device="cpu",
        precision="bf16",
        log_every=10,
        diag_every=50,
        ckpt_every=BF16_STEPS,
        knn_every=0,
        progress=False,
        threads=1,
        views=ViewsConfig(size=16),
        model=ModelConfig(backbone="small_cnn", expander="32-32", width=4),
        optim=OptimConfig(name="lars", base_lr=0.3, warmup_epochs=1.0),
    )
    result = train(cfg)  # raises NonFiniteLossError at the first non-finite step
    assert result.step == BF16_STEPS
    rows = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == BF16_STEPS // 10
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    for key, value in load_checkpoint(cfg.out / "checkpoints" / "last.pt")["model"].items():
        assert torch.isfinite(value.float()).all(), key
    # it learned something: the loss went down from its start
    assert rows[-1]["loss"] < rows[0]["loss"]


def _embeddings(n: int, d: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views' embeddings as a training run sees them.

    expander: outputs of a freshly initialised official expander (Linear-BN-ReLU-Linear) for ReLU features
    of two noisy views; large: the same times 100 (unnormalised); collapse: every sample on one direction
    plus 1e-3 noise, off a common mean (the covariance is nearly all off-diagonal); whitened: decorrelated
    unit-variance dimensions (the end of a healthy run: the off-diagonal part is tiny).
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "collapse":
        direction, size = torch.randn(1, d, generator=g), torch.randn(n, 1, generator=g)
        return tuple(size * direction + 1e-3 * torch.randn(n, d, generator=g) + 5 for _ in range(2))  # type: ignore[return-value]
    if kind == "whitened":
        z = torch.randn(n, d, generator=g, dtype=torch.float64)
        z = (z - z.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T)).T)
        return z.float(), (z + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    torch.manual_seed(seed)
    expander = Expander(512, f"1024-{d}")
    h = torch.relu(torch.randn(n, 512, generator=g))
    with torch.no_grad():
        z_a = expander(h + 0.1 * torch.randn(n, 512, generator=g))
        z_b = expander(h + 0.1 * torch.randn(n, 512, generator=g))
    scale = 100.0 if kind == "large" else 1.0
    return z_a * scale, z_b * scale


CASES = [
    (256, 512, "expander"),
    (256, 2048, "expander"),
    (256, 2048, "large"),
    (256, 2048, "collapse"),
    (64, 2048, "expander"),
    (2048, 256, "expander"),
    (2048, 256, "whitened"),
    (512, 128, "collapse"),
]


def _float64_reference(z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a, b = z_a.double().requires_grad_(), z_b.double().requires_grad_()
    terms = ref_vicreg(a, b) if z_a.shape[1] <= 2048 else tuple(vicreg_loss(a, b))
    terms[0].backward()
    assert a.grad is not None and b.grad is not None
    return (*(t.detach() for t in terms), a.grad, b.grad)


TERMS = ("loss", "invariance", "variance", "covariance")


def _cov_frobenius_sq(z: torch.Tensor) -> float:
    """``||C||_F^2`` of the covariance, in float64, through the N x N Gram matrix (cheap at D = 8192)."""
    zc = z.double() - z.double().mean(0)
    return float((zc @ zc.T).square().sum()) / (z.shape[0] - 1) ** 2


def _check_float32_against_float64(n: int, d: int, kind: str) -> None:
    z_a, z_b = _embeddings(n, d, kind)
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    out = vicreg_loss(a, b)
    out.loss.backward()
    *ref, grad_a, grad_b = _float64_reference(z_a, z_b)
    # floors: 1e-6 of each term's natural scale (covariance: ||C||_F^2 / D, the sum the off-diagonal part is
    # taken from), for terms near zero (whitened covariance, variance of spread dimensions)
    cov_scale = sum(_cov_frobenius_sq(z) for z in (z_a, z_b)) / d
    floors = (1e-6 * (25 * float(ref[1]) + 25 + cov_scale), 1e-9, 1e-7, 1e-6 * cov_scale)
    for name, mine, theirs, floor in zip(TERMS, out, ref, floors, strict=True):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine.double(), theirs, rtol=1e-5, atol=floor, msg=f"{name} {n}x{d} {kind}")
    assert a.grad is not None and b.grad is not None
    floor = 1e-6 * float(grad_a.abs().max() + grad_b.abs().max())
    torch.testing.assert_close(a.grad.double(), grad_a, rtol=1e-4, atol=floor)
    torch.testing.assert_close(b.grad.double(), grad_b, rtol=1e-4, atol=floor)


@pytest.mark.parametrize(("n", "d", "kind"), CASES)
def test_float32_loss_matches_float64(n: int, d: int, kind: str) -> None:
    _check_float32_against_float64(n, d, kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["expander", "collapse"])
def test_float32_loss_matches_float64_at_the_paper_width(kind: str) -> None:
    _check_float32_against_float64(256, 8192, kind)
