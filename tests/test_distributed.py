"""Real multi-process tests: 2 CPU processes with the gloo backend, spawned by the test.

With ``gather=True`` the loss (averaged over ranks) and DDP's averaged gradients on 2 x B rows must equal the
single-process loss and gradients on the same 2B rows; with ``gather=False`` they must not. With
``gather="sharded"`` (2 and 3 processes, float64) every rank's loss and DDP's gradients equal the single-process
full-batch ones and the gathered form's to relative 1e-10.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import free_port
from vicreg import covariance_term, variance_covariance_loss, variance_term, vicreg_loss
from vicreg.distributed import gather_with_grad, get_dist_info, is_distributed
from vicreg.loss import _sharded_variance_covariance

WORLD = 2
B, D_IN, D = 6, 10, 16  # N < D on each rank and globally (Gram path) ...
B2, D2 = 24, 8  # ... and N > D (D x D path)


def _data(b: int, d_in: int):
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(WORLD * b, d_in, generator=g)
    x_b = x_a + 0.3 * torch.randn(WORLD * b, d_in, generator=g)
    return x_a, x_b


def _model(d_in: int, d: int) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, d))


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _single_process(b: int, d_in: int, d: int):
    x_a, x_b = _data(b, d_in)
    model = _model(d_in, d)
    out = vicreg_loss(model(x_a), model(x_b))
    out.loss.backward()
    return [t.detach() for t in out], _grads(model)


def _worker(rank: int, port: int, out_dir: str, b: int, d_in: int, d: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        info = get_dist_info()
        assert (info.rank, info.world_size, is_distributed()) == (rank, WORLD, True)
        x_a, x_b = _data(b, d_in)
        rows = slice(rank * b, (rank + 1) * b)
        results = {}
        for gather in (True, False):
            model = DistributedDataParallel(_model(d_in, d))
            out = vicreg_loss(model(x_a[rows]), model(x_b[rows]), gather=gather)
            out.loss.backward()  # DDP averages gradients over ranks
            terms = torch.stack([t.detach() for t in out])
            dist.all_reduce(terms)
            results[gather] = (terms / WORLD, _grads(model.module))
        # the gathered tensor is the global batch, in rank order, and its gradient returns to the owner
        z = torch.full((2, 3), float(rank), requires_grad=True)
        full = gather_with_grad(z)
        (full * torch.arange(full.numel()).view_as(full)).sum().backward()
        results["gather"] = (full.detach(), z.grad)
        # the VC regulariser alone sees the global batch too
        reg_in = _data(b, d)[0][rows].clone().requires_grad_()
        reg = variance_covariance_loss(reg_in)
        reg.backward()
        results["vc"] = (reg.detach(), reg_in.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, b: int, d_in: int, d: int) -> list[dict]:
    mp.spawn(_worker, args=(free_port(), str(tmp_path), b, d_in, d), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize(("b", "d_in", "d"), [(B, D_IN, D), (B2, D_IN, D2)])
def test_gathered_loss_and_ddp_gradients_equal_single_process(tmp_path: Path, b: int, d_in: int, d: int):
    ranks = _run(tmp_path, b, d_in, d)
    terms_1p, grads_1p = _single_process(b, d_in, d)
    terms_1p = torch.stack(terms_1p)
    for res in ranks:
        terms, grads = res[True]
        torch.testing.assert_close(terms, terms_1p, rtol=1e-5, atol=1e-6)
        for g, g1 in zip(grads, grads_1p, strict=True):
            torch.testing.assert_close(g, g1, rtol=1e-4, atol=1e-6)
        # without gather each rank sees only its half: variance/covariance and the gradients differ
        terms_local, grads_local = res[False]
        assert not torch.allclose(terms_local[3], terms_1p[3], rtol=1e-3)
        assert any(not torch.allclose(g, g1, rtol=1e-3) for g, g1 in zip(grads_local, grads_1p, strict=True))
        # invariance is local either way, and its rank-average is the global MSE
        torch.testing.assert_close(terms_local[1], terms_1p[1], rtol=1e-5, atol=1e-7)

    # gather_with_grad: rows in rank order; each rank gets back the summed gradient of its own rows
    full, grad0 = ranks[0]["gather"]
    expected_full = torch.cat([torch.full((2, 3), float(r)) for r in range(WORLD)])
    torch.testing.assert_close(full, expected_full)
    weights = torch.arange(full.numel(), dtype=torch.float32).view_as(full)
    for r in range(WORLD):
        torch.testing.assert_close(ranks[r]["gather"][1], WORLD * weights[2 * r : 2 * r + 2])
    assert grad0 is not None

    # VC regulariser on the global batch equals the single-process value on all rows
    rows = _data(b, d)[0].clone().requires_grad_()
    reg = variance_covariance_loss(rows)
    reg.backward()
    assert rows.grad is not None
    for r in range(WORLD):
        value, grad = ranks[r]["vc"]
        torch.testing.assert_close(value, reg.detach(), rtol=1e-5, atol=1e-7)
        # each rank's gradient is WORLD x its slice of the full-batch gradient (DDP then divides by WORLD)
        torch.testing.assert_close(grad / WORLD, rows.grad[r * b : (r + 1) * b], rtol=1e-4, atol=1e-7)


def test_dist_info_without_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = get_dist_info()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 8, 1, False)
    assert not is_distributed()
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var)
    assert get_dist_info().is_main


# ------------------------------------------------------------------------------ gather="sharded", float64
# Per rank: loss and terms must be the full batch's (no averaging over ranks), DDP's averaged gradients the
# single-process full-batch ones, to relative 1e-10, with 2 and 3 processes, for N < D and N >= D.
SHARDED_SHAPES = [(4, 10, 24), (12, 10, 6)]  # (rows per rank, input width, embedding width D)


def _data64(world: int, b: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x_a = torch.randn(world * b, d_in, generator=g, dtype=torch.float64)
    return x_a, x_a + 0.3 * torch.randn(world * b, d_in, generator=g, dtype=torch.float64)


def _model64(d_in: int, d: int) -> nn.Module:
    return _model(d_in, d).double()


def _sharded_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for b, d_in, d in SHARDED_SHAPES:
            x_a, x_b = _data64(world, b, d_in)
            rows = slice(rank * b, (rank + 1) * b)
            for gather in (True, "sharded"):
                model = DistributedDataParallel(_model64(d_in, d))
                out = vicreg_loss(model(x_a[rows]), model(x_b[rows]), gather=gather)
                out.loss.backward()
                results[(b, d, gather)] = (torch.stack([t.detach() for t in out]), _grads(model.module))
            # the regulariser alone, and both covariance forms forced, on the input rows themselves
            z_all = _data64(world, b, d)[0]
            z = z_all[rows].clone().requires_grad_()
            reg = variance_covariance_loss(z, gather="sharded")
            reg.backward()
            results[(b, d, "vc")] = (reg.detach(), z.grad)
            for form in ("gram", "square"):
                z = z_all[rows].clone().requires_grad_()
                var, cov = _sharded_variance_covariance(torch.stack([z, 2 * z]), 1.0, 1e-4, form=form)
                (3 * var[0] + cov[0] + var[1] / 5 + cov[1] / 7).backward()
                results[(b, d, form)] = (torch.stack([var.detach(), cov.detach()]), z.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _rel_err(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """Norm of the difference over the norm of ``expected`` (or of ``scale``: a gradient that is exactly zero
    in exact arithmetic, like the last bias's here, is compared at the scale of all the gradients)."""
    assert actual.dtype == expected.dtype == torch.float64
    return float((actual - expected).norm() / (expected if scale is None else scale).norm())


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loss_and_ddp_gradients_equal_single_process_float64(tmp_path: Path, world: int) -> None:
    mp.spawn(_sharded_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for b, d_in, d in SHARDED_SHAPES:
        # single process on the concatenated batch
        x_a, x_b = _data64(world, b, d_in)
        model = _model64(d_in, d)
        out = vicreg_loss(model(x_a), model(x_b))
        out.loss.backward()
        terms_1p, grads_1p = torch.stack([t.detach() for t in out]), _grads(model)
        z_all = _data64(world, b, d)[0].requires_grad_()
        reg_1p = variance_covariance_loss(z_all)
        reg_1p.backward()
        assert z_all.grad is not None
        # two stacked branches (z and 2z) with different weights: each branch's terms and the summed gradient
        z_all2 = z_all.detach().clone().requires_grad_()
        var_1p = torch.stack([variance_term(z_all2), variance_term(2 * z_all2)])
        cov_1p = torch.stack([covariance_term(z_all2), covariance_term(2 * z_all2)])
        (3 * var_1p[0] + cov_1p[0] + var_1p[1] / 5 + cov_1p[1] / 7).backward()
        assert z_all2.grad is not None
        forms_1p = torch.stack([var_1p, cov_1p]).detach()

        for r, res in enumerate(ranks):
            rows = slice(r * b, (r + 1) * b)
            terms, grads = res[(b, d, "sharded")]
            assert _rel_err(terms, terms_1p) < 1e-10  # every term, invariance included, is the full batch's
            scale = torch.cat([g.flatten() for g in grads_1p])
            for g, g1 in zip(grads, grads_1p, strict=True):
                assert _rel_err(g, g1, scale) < 1e-10
            # ... and equal to today's gathered form (whose invariance is the rank's own, hence [2:] and loss)
            terms_g, grads_g = res[(b, d, True)]
            assert _rel_err(terms_g[2:], terms[2:]) < 1e-10
            for g, gg in zip(grads, grads_g, strict=True):
                assert _rel_err(g, gg, scale) < 1e-10
            reg, reg_grad = res[(b, d, "vc")]
            assert _rel_err(reg, reg_1p.detach()) < 1e-10
            # the input's gradient is world x its slice of the full-batch gradient (DDP then divides by world)
            assert _rel_err(reg_grad / world, z_all.grad[rows]) < 1e-10
            for form in ("gram", "square"):
                values, grad = res[(b, d, form)]
                assert _rel_err(values, forms_1p) < 1e-10, form
                assert _rel_err(grad / world, z_all2.grad[rows]) < 1e-10, form
    # the sharded loss is the same on every rank, the gathered one differs by the rank's own invariance
    assert torch.equal(ranks[0][(4, 24, "sharded")][0], ranks[1][(4, 24, "sharded")][0])
