"""Multi-crop: local views (ImageViews.multi), the multi-view loss and VICReg.forward_multi.

References: the global loss of VICRegL (facebookresearch/VICRegL ``main_vicregl.py`` ``global_loss``, commit
803ae4c8cd1649a820f03afb4793763e95317620, l. 421-446) and lightly ``VICRegLLoss._global_invariance_loss`` /
``_global_variance_and_covariance_loss`` (lightly-ai/lightly e8d317fc, ``lightly/loss/vicregl_loss.py``
l. 208-276): invariance over the ordered pairs (global i, any other view j), variance and covariance averaged
over the views. The official two-view loss averages the variance of its two branches and adds their
covariances (facebookresearch/vicreg ``main_vicreg.py``).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.helpers import free_port, tiny_config
from vicreg import ImageViews, VICReg, vicreg_loss, vicreg_multiview_loss
from vicreg.augment.images import PAPER_VIEW_A, apply_view, sample_view_params
from vicreg.models import SmallCNN, frozen_running_stats

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def images(n: int = 5, c: int = 3, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# Views


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_local_views_shapes_dtypes_devices(device: str, channels: int) -> None:
    x = images(c=channels).to(device)
    views = ImageViews((20, 24), local_crops=3)
    assert views.local_size == (10, 12)
    globals_, locals_ = views.multi(x, generator=gen())
    assert [tuple(v.shape) for v in globals_] == [(5, channels, 20, 24)] * 2
    assert [tuple(v.shape) for v in locals_] == [(5, channels, 10, 12)] * 3
    for v in globals_ + locals_:
        assert v.dtype == torch.float32 and v.device == x.device and bool(torch.isfinite(v).all())
    # float64 stays float64, as for the pair
    _, locals64 = views.multi(x.double() / 255, generator=gen())
    assert all(v.dtype == torch.float64 for v in locals64)
    # the local views alone, and M = 0
    assert len(views.local_views(x, generator=gen())) == 3
    assert ImageViews(20).local_views(x) == []


def test_local_size_defaults_and_explicit() -> None:
    assert ImageViews(28, local_crops=2).local_size == (14, 14)
    assert ImageViews(224).local_size == (112, 112)
    assert ImageViews(12).local_size == (8, 8)  # at least 8 ...
    assert ImageViews(6).local_size == (6, 6)  # ... but not larger than the global views
    assert ImageViews(32, local_size=10).local_size == (10, 10)
    assert ImageViews(32, local_size=(12, 16)).local_size == (12, 16)
    assert ImageViews(224, local_crops=1).local_blur_kernel_size == 11  # default of 112 px
    assert ImageViews(224, local_crops=1, local_blur_kernel_size=5).local_blur_kernel_size == 5


def test_local_views_reproducible_with_a_generator() -> None:
    x = images()
    views = ImageViews(16, local_crops=2)
    a = views.multi(x, generator=gen(3))
    b = views.multi(x, generator=gen(3))
    c = views.multi(x, generator=gen(4))
    for u, v in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert torch.equal(u, v)
    assert not any(torch.equal(u, v) for u, v in zip(a[1], c[1], strict=True))


@pytest.mark.parametrize("crops", [0, 3])
def test_global_views_bit_identical_to_the_pair(crops: int) -> None:
    """The local crops draw their randomness after the global views: the pair is unchanged whatever M."""
    x = images()
    views = ImageViews(16, local_crops=crops)
    v_a, v_b = views(x, generator=gen(7))
    globals_, locals_ = views.multi(x, generator=gen(7))
    assert torch.equal(globals_[0], v_a) and torch.equal(globals_[1], v_b)
    assert len(locals_) == crops
    # and the same as an instance without local crops
    w_a, w_b = ImageViews(16)(x, generator=gen(7))
    assert torch.equal(w_a, v_a) and torch.equal(w_b, v_b)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_local_views_equal_apply_view_of_the_repeated_batch(interpolation: str) -> None:
    """Batched local crops == apply_view on M copies of the batch, with the parameters drawn after the pair's."""
    x = images(n=4)
    m = 3
    views = ImageViews(16, local_crops=m, local_size=(8, 10), normalize=False, interpolation=interpolation)
    _, locals_ = views.multi(x, generator=gen(11))
    g = gen(11)
    sample_view_params(views.view_a, 4, (20, 24), g)
    sample_view_params(views.view_b, 4, (20, 24), g)
    params = sample_view_params(views.view_local, m * 4, (20, 24), g)
    expected = apply_view(
        x.float().div(255).repeat(m, 1, 1, 1),
        params,
        (8, 10),
        blur_kernel_size=views.local_blur_kernel_size,
        interpolation=interpolation,
    )
    assert torch.equal(torch.cat(locals_), expected)


def test_local_crops_differ_per_sample_and_per_crop() -> None:
    """One image repeated N times, no colour augmentation: every crop of every sample is its own."""
    x = images(n=1, h=32, w=32).expand(6, -1, -1, -1)
    plain = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0, "flip_p": 0.0}
    views = ImageViews(32, local_crops=4, view_local=plain)
    _, locals_ = views.multi(x, generator=gen(1))
    crops = torch.cat(locals_)  # (4 * 6, ...)
    for i, j in itertools.combinations(range(crops.shape[0]), 2):
        assert not torch.equal(crops[i], crops[j]), (i, j)


def test_local_crop_scale_respected() -> None:
    """The crops actually used (reconstructed as above) have areas in local_crop_scale, and span it."""
    n, m, lo, hi = 64, 4, 0.1, 0.3
    views = ImageViews(32, local_crops=m, local_crop_scale=(lo, hi))
    assert views.view_local.crop_scale == (lo, hi)
    assert views.view_a.crop_scale == views.view_b.crop_scale == (0.08, 1.0)
    g = gen(5)
    sample_view_params(views.view_a, n, (48, 48), g)
    sample_view_params(views.view_b, n, (48, 48), g)
    boxes = sample_view_params(views.view_local, m * n, (48, 48), g).boxes
    area = (boxes[:, 2] * boxes[:, 3]).double() / 48**2
    # rounding each side to whole pixels moves the area by at most about (h + w + 1) / (H W)
    slack = (boxes[:, 2] + boxes[:, 3] + 1).double() / 48**2
    assert bool(((area >= lo - slack) & (area <= hi + slack)).all())
    assert area.min() < lo + 0.05 and area.max() > hi - 0.05
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 48).all())


def test_view_local_defaults_and_overrides() -> None:
    views = ImageViews(32, local_crops=2, hue=0.0, view_b={"solarize_p": 0.5})
    # view B's configuration (after the shared and view_b overrides) with the local crop scale
    assert views.view_local == views.view_b.__class__(**{**vars(views.view_b), "crop_scale": (0.05, 0.4)})
    assert views.view_local.hue == 0.0 and views.view_local.solarize_p == 0.5
    assert ImageViews(32, local_crops=2, view_local={"blur_p": 0.0}).view_local.blur_p == 0.0
    a_like = ImageViews(32, local_crops=2, view_local=PAPER_VIEW_A).view_local
    assert (a_like.blur_p, a_like.solarize_p, a_like.crop_scale) == (1.0, 0.0, (0.05, 0.4))
    assert "local_crops=2" in repr(views) and "local_crops" not in repr(ImageViews(32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"local_crops": -1}, "local_crops"),
        ({"local_crops": True}, "local_crops"),
        ({"local_crops": 1.5}, "local_crops"),
        ({"local_size": 0}, "local_size"),
        ({"local_size": "big"}, "local_size"),
        ({"local_size": (8, 8, 8)}, "local_size"),
        ({"local_crop_scale": (0.5, 0.2)}, "crop_scale"),
        ({"local_crop_scale": (0.1, 1.5)}, "crop_scale"),
        ({"view_local": {"crop_scale": (0.1, 0.2)}}, "local_crop_scale"),
        ({"view_local": {"bogus": 1}}, "unknown view option"),
        ({"local_blur_kernel_size": 4}, "local_blur_kernel_size"),
        ({"local_size": 4, "local_blur_kernel_size": 9}, "local_blur_kernel_size"),
    ],
)
def test_local_view_arguments_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        ImageViews(32, **kwargs)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Loss


def embeddings(v: int, n: int = 8, d: int = 12, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    g = gen(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    views = [base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(v)]
    return [z.to(dtype).requires_grad_() for z in views]


@pytest.mark.parametrize(("n", "d"), [(8, 12), (24, 6)])  # Gram (N < D) and D x D (N >= D) covariance paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_global_views_equal_vicreg_loss(n: int, d: int, dtype: torch.dtype) -> None:
    z_a, z_b = embeddings(2, n, d, dtype=dtype)
    ref = vicreg_loss(z_a, z_b, sim_coeff=3.0, std_coeff=5.0, cov_coeff=7.0, gamma=0.9)
    out = vicreg_multiview_loss([z_a, z_b], sim_coeff=3.0, std_coeff=5.0, cov_coeff=7.0, gamma=0.9)
    # bit-identical today; a tolerance so that a re-ordering inside the shared term functions does not fail it
    for t, r in zip(out, ref, strict=True):
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, r, rtol=1e-6, atol=0)
    grads = torch.autograd.grad(out.loss, [z_a, z_b])
    grads_ref = torch.autograd.grad(ref.loss, [z_a, z_b])
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-9)

    # VICRegL's weighting: the covariance averaged instead of added, i.e. cov_coeff / 2 on a pair
    vl = vicreg_multiview_loss([z_a, z_b], sim_coeff=3.0, std_coeff=5.0, cov_coeff=7.0, gamma=0.9, weighting="vicregl")
    ref_half = vicreg_loss(z_a, z_b, sim_coeff=3.0, std_coeff=5.0, cov_coeff=3.5, gamma=0.9)
    torch.testing.assert_close(vl.loss, ref_half.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(vl.covariance, ref.covariance / 2, rtol=1e-6, atol=0)
    torch.testing.assert_close(vl.invariance, ref.invariance, rtol=0, atol=0)
    torch.testing.assert_close(vl.variance, ref.variance, rtol=0, atol=0)


def _naive_terms(
    globals_: list[torch.Tensor], locals_: list[torch.Tensor], gamma: float = 1.0, eps: float = 1e-4
) -> tuple[float, float, float]:
    """Invariance over ordered pairs (global i, any other view j) by a double loop; variance and covariance
    (full D x D matrix, off-diagonal mask) summed over the views: everything in float64."""
    views = [z.detach().double() for z in globals_ + locals_]
    inv, pairs = 0.0, 0
    for i in range(len(globals_)):
        for j in range(len(views)):
            if j != i:
                inv += float(((views[i] - views[j]) ** 2).mean())
                pairs += 1
    var_sum, cov_sum = 0.0, 0.0
    for z in views:
        n, d = z.shape
        var_sum += float(torch.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean())
        zc = z - z.mean(dim=0)
        cov = zc.T @ zc / (n - 1)
        cov_sum += float((cov[~torch.eye(d, dtype=torch.bool)] ** 2).sum() / d)
    return inv / pairs, var_sum, cov_sum


@pytest.mark.parametrize(("g", "n_local"), [(2, 0), (2, 1), (2, 4), (3, 2), (1, 3)])
@pytest.mark.parametrize("weighting", ["mean", "vicregl"])
def test_terms_match_naive_reference(g: int, n_local: int, weighting: str) -> None:
    zs = embeddings(g + n_local, n=10, d=6, seed=g * 10 + n_local)
    out = vicreg_multiview_loss(zs[:g], zs[g:], sim_coeff=2.0, std_coeff=3.0, cov_coeff=4.0, weighting=weighting)
    inv, var_sum, cov_sum = _naive_terms(zs[:g], zs[g:])
    v = g + n_local
    cov = cov_sum * (2 if weighting == "mean" else 1) / v
    expected = torch.tensor([2.0 * inv + 3.0 * var_sum / v + 4.0 * cov, inv, var_sum / v, cov], dtype=torch.float64)
    torch.testing.assert_close(torch.stack(list(out)).double(), expected, rtol=1e-5, atol=1e-7)


def test_symmetric_under_permutation_of_local_views() -> None:
    zs = embeddings(5, seed=3)
    globals_, locals_ = zs[:2], zs[2:]
    out = vicreg_multiview_loss(globals_, locals_)
    grads = torch.autograd.grad(out.loss, zs)
    for perm in ([2, 0, 1], [1, 2, 0]):
        shuffled = [locals_[p] for p in perm]
        out_p = vicreg_multiview_loss(globals_, shuffled)
        for t, r in zip(out_p, out, strict=True):
            torch.testing.assert_close(t, r, rtol=1e-6, atol=1e-7)
        grads_p = torch.autograd.grad(out_p.loss, zs)
        for gp, gr in zip(grads_p, grads, strict=True):  # gradients w.r.t. the same tensors
            torch.testing.assert_close(gp, gr, rtol=1e-5, atol=1e-7)
    # the two global views are interchangeable too
    out_swapped = vicreg_multiview_loss(globals_[::-1], locals_)
    torch.testing.assert_close(out_swapped.loss, out.loss, rtol=1e-6, atol=1e-7)


def test_gradient_reaches_every_view() -> None:
    zs = embeddings(6, seed=4)
    out = vicreg_multiview_loss(zs[:2], zs[2:])
    for z, grad in zip(zs, torch.autograd.grad(out.loss, zs, retain_graph=True), strict=True):
        assert grad.shape == z.shape and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    # each term alone reaches every view as well (the invariance of a local view only through the globals)
    for term in out[1:]:
        assert all(float(gr.abs().sum()) > 0 for gr in torch.autograd.grad(term, zs, retain_graph=True))


def test_local_views_change_the_loss_as_weighted() -> None:
    """Adding local views: invariance averages in the global-local pairs, variance averages over views."""
    zs = embeddings(4, seed=5)
    pair = vicreg_multiview_loss(zs[:2])
    multi = vicreg_multiview_loss(zs[:2], zs[2:])
    mse = [float(((zs[i] - zs[j]).detach().double() ** 2).mean()) for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]]
    # 2 * (g0, g1) + the four global-local pairs, over 2 * 3 ordered pairs
    assert float(multi.invariance.detach()) == pytest.approx((2 * mse[0] + sum(mse[1:])) / 6, rel=1e-5)
    assert float(pair.invariance.detach()) == pytest.approx(mse[0], rel=1e-6)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([torch.randn(4, 3)],), {}, "at least one global view and two views"),
        (([], [torch.randn(4, 3), torch.randn(4, 3)]), {}, "at least one global view"),
        (([torch.randn(4, 3), torch.randn(4, 3)], [torch.randn(5, 3)]), {}, r"local_embeddings\[0\] has shape"),
        (([torch.randn(4, 3), torch.randn(4, 2)],), {}, r"global_embeddings\[1\] has shape"),
        (([torch.randn(4, 3), torch.randn(4, 3)],), {"weighting": "sum"}, "weighting must be one of"),
        (([torch.randn(4, 3), torch.full((4, 3), float("nan"))],), {}, "NaN"),
        (([torch.randn(1, 3), torch.randn(1, 3)],), {}, "batch of 1"),
        (([torch.randn(4, 3), torch.randn(4, 3)],), {"cov_coeff": -1.0}, "cov_coeff"),
    ],
)
def test_multiview_loss_validation(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vicreg_multiview_loss(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Model


def _model(two_branches: bool = False) -> VICReg:
    torch.manual_seed(0)
    kwargs = {"backbone_b": SmallCNN(3, width=4), "feature_dim_b": 32} if two_branches else {}
    model = VICReg(SmallCNN(3, width=4), "16-8", feature_dim=32, **kwargs)
    with torch.no_grad():  # non-trivial affine parameters, so that a mix-up of statistics shows
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _views(n: int = 6, m: int = 3) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = gen(2)
    globals_x = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]
    return globals_x, [torch.randn(n, 3, 8, 8, generator=g) for _ in range(m)]


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def test_forward_multi_without_locals_is_the_pair_forward() -> None:
    model = _model()
    twin = copy.deepcopy(model)
    (x_a, x_b), _ = _views()
    z_a, z_b = model(x_a, x_b)
    globals_, locals_ = twin.forward_multi([x_a, x_b])
    assert locals_ == []
    assert torch.equal(globals_[0], z_a) and torch.equal(globals_[1], z_b)
    for k, v in _buffers(model).items():
        assert torch.equal(v, twin.get_buffer(k)), k


@pytest.mark.parametrize("two_branches", [False, True])
def test_local_views_leave_running_statistics_untouched(two_branches: bool) -> None:
    """A training step with local views leaves every BN buffer as the same step without them."""
    model = _model(two_branches)
    twin = copy.deepcopy(model)
    globals_x, locals_x = _views()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    z_g, z_l = model.forward_multi(globals_x, locals_x)
    z_g_twin, _ = twin.forward_multi(globals_x)
    for z, zt in zip(z_g, z_g_twin, strict=True):  # the global views do not see the local ones
        assert torch.equal(z, zt)
    assert len(z_l) == 3 and all(tuple(z.shape) == (6, 8) for z in z_l)
    vicreg_multiview_loss(z_g, z_l).loss.backward()
    vicreg_multiview_loss(z_g_twin).loss.backward()
    opt.step()
    opt_twin.step()
    buffers, buffers_twin = _buffers(model), _buffers(twin)
    assert any(k.endswith("running_mean") for k in buffers)
    for k, v in buffers.items():
        assert torch.equal(v, buffers_twin[k]), k
    # the parameters did move differently: the local views were part of the step
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))
    # and the flags are restored
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize("two_branches", [False, True])
def test_local_views_go_through_branch_b_with_batch_statistics(two_branches: bool) -> None:
    model = _model(two_branches)
    twin = copy.deepcopy(model)
    globals_x, locals_x = _views(m=2)
    _, z_l = model.forward_multi(globals_x, locals_x)
    twin.forward(*globals_x)
    expected = twin.expand(torch.cat(locals_x), "b")  # train mode: normalised with the batch's statistics
    torch.testing.assert_close(torch.cat(z_l), expected, rtol=0, atol=0)
    if two_branches:
        assert not torch.allclose(expected, twin.expand(torch.cat(locals_x), "a"))


def test_every_parameter_receives_a_gradient_with_local_views() -> None:
    model = _model(two_branches=True)
    globals_x, locals_x = _views()
    vicreg_multiview_loss(*model.forward_multi(globals_x, locals_x)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_frozen_running_stats_in_eval_mode_and_restored_on_error() -> None:
    bn = nn.BatchNorm1d(4)
    assert bn.running_mean is not None
    bn.running_mean.fill_(0.5)
    bn.eval()
    x = torch.randn(6, 4)
    with frozen_running_stats(bn):
        out = bn(x)
    torch.testing.assert_close(out, (x - 0.5) / torch.sqrt(torch.tensor(1.0 + bn.eps)))  # running statistics
    bn.train()
    with pytest.raises(RuntimeError, match="boom"), frozen_running_stats(bn):
        raise RuntimeError("boom")
    assert bn.track_running_stats
    untracked = nn.BatchNorm1d(4, track_running_stats=False)
    with frozen_running_stats(untracked):
        untracked(x)
    assert not untracked.track_running_stats  # left as it was


def test_forward_multi_validation() -> None:
    model = _model()
    (x_a, x_b), locals_x = _views()
    with pytest.raises(ValueError, match="two global views"):
        model.forward_multi([x_a], locals_x)
    with pytest.raises(ValueError, match="one shape"):
        model.forward_multi([x_a, x_b], [locals_x[0], torch.randn(6, 3, 10, 10)])


# ---------------------------------------------------------------------------------------------------------
# Two processes (gloo): each view's variance and covariance on the global batch

WORLD, B, D_IN, D = 2, 6, 10, 16


def _inputs() -> list[torch.Tensor]:
    g = gen(0)
    base = torch.randn(WORLD * B, D_IN, generator=g)
    return [base + 0.3 * torch.randn(WORLD * B, D_IN, generator=g) for _ in range(4)]  # 2 global + 2 local


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D_IN, 32), nn.ReLU(), nn.Linear(32, D))


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        xs = [x[rank * B : (rank + 1) * B] for x in _inputs()]
        results = {}
        for name, n_globals, n_locals in [("multi", 2, 2), ("pair", 2, 0)]:
            model = DistributedDataParallel(_net())
            zs = [model(x) for x in xs[: n_globals + n_locals]]
            out = vicreg_multiview_loss(zs[:n_globals], zs[n_globals:])
            out.loss.backward()
            terms = torch.stack([t.detach() for t in out])
            dist.all_reduce(terms)
            results[name] = (terms / WORLD, _grads(model.module))
        model = DistributedDataParallel(_net())
        out = vicreg_loss(model(xs[0]), model(xs[1]))
        out.loss.backward()
        terms = torch.stack([t.detach() for t in out])
        dist.all_reduce(terms)
        results["vicreg"] = (terms / WORLD, _grads(model.module))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    model = _net()
    zs = [model(x) for x in _inputs()]
    out = vicreg_multiview_loss(zs[:2], zs[2:])
    out.loss.backward()
    terms_1p, grads_1p = torch.stack([t.detach() for t in out]), _grads(model)
    for res in ranks:
        terms, grads = res["multi"]
        torch.testing.assert_close(terms, terms_1p, rtol=1e-5, atol=1e-6)
        for g, g1 in zip(grads, grads_1p, strict=True):
            torch.testing.assert_close(g, g1, rtol=1e-4, atol=1e-6)
        # distributed, two global views: the multi-view loss is the two-view loss
        terms_pair, grads_pair = res["pair"]
        terms_ref, grads_ref = res["vicreg"]
        torch.testing.assert_close(terms_pair, terms_ref, rtol=1e-6, atol=0)
        for g, g1 in zip(grads_pair, grads_ref, strict=True):
            torch.testing.assert_close(g, g1, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_training_with_local_crops_resumes_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """views.local_crops through the real trainer: finite loss, resume == uninterrupted, bf16."""
    from dataclasses import replace

    from vicreg.checkpoint import load_checkpoint
    from vicreg.config import ViewsConfig
    from vicreg.train import train

    views = ViewsConfig(size=16, local_crops=2, local_size=8)
    full = train(tiny_config(tmp_path / "a", max_steps=6, knn_every=0, views=views, precision="bf16"))
    assert all(math.isfinite(v) for v in full.metrics.values())
    half = tiny_config(tmp_path / "b", max_steps=3, knn_every=0, views=views, precision="bf16")
    train(half)
    resumed = train(replace(half, max_steps=6))
    wa = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
    pair = train(tiny_config(tmp_path / "c", max_steps=6, knn_every=0, precision="bf16"))
    assert pair.metrics["loss"] != full.metrics["loss"]  # the local crops really take part
