"""The VICReg loss (Bardes, Ponce and LeCun, ICLR 2022), exactly as the official code computes it.

Each term is a small pure function that can be tested alone; :func:`vicreg_loss` combines them and
:class:`VICRegLoss` is a thin ``nn.Module`` around it.

Faithfulness to the official implementation (facebookresearch/vicreg ``main_vicreg.py``):

* invariance: ``F.mse_loss(z_a, z_b)`` on the *local* batch;
* variance: per branch ``mean_d relu(gamma - sqrt(Var(z_d) + eps))`` with the unbiased variance, and the two
  branches averaged (each divided by 2);
* covariance: per branch the sum of squared off-diagonal entries of the covariance matrix of the centred
  *global* batch (divided by ``N - 1``), divided by ``D``; the two branches added;
* under ``torch.distributed`` the variance and covariance terms see the global batch through an all-gather
  whose backward sums gradients back to the owning rank (see :mod:`vicreg.distributed`).

``gather="sharded"`` computes the same global statistics without every process repeating them: the variance
from two all-reduced ``D``-vectors (column sums, then column sums of squares of the globally centred rows), and
the covariance with each process computing only its share of the product (its row block of the Gram matrix
against the gathered batch, or its partial ``Zc_k^T Zc_k`` all-reduced, whichever is cheaper), so the
``O(N^2 D)`` work is divided by the world size. Loss, terms and (after DDP's averaging) gradients equal the
single-process full-batch ones; tests/test_distributed.py checks it with 2 and 3 processes in float64.

Where we differ is only in *how* the covariance term is computed: never with a ``D x D`` mask or an
off-diagonal copy. We use ``sum_{i != j} C_ij^2 = ||C||_F^2 - sum_d C_dd^2`` and, when ``N < D``, compute
``||C||_F^2`` through the ``N x N`` Gram matrix (``||Z^T Z||_F = ||Z Z^T||_F``), which is what makes the loss
fast and small at the paper's 8192-wide expander. ``benchmarks/loss.py`` measures it.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from vicreg.distributed import all_gather_no_grad, all_reduce_with_grad, gather_with_grad, is_distributed

Gather = bool | Literal["sharded"]
"""How variance and covariance see the batch under ``torch.distributed``: ``True`` every process gathers the
global batch and computes them (official), ``"sharded"`` the global statistics with the work shared out,
``False`` per-process statistics."""

__all__ = [
    "Gather",
    "VICRegLoss",
    "VICRegOutput",
    "covariance_term",
    "invariance_term",
    "variance_covariance_loss",
    "variance_term",
    "vicreg_loss",
    "vicreg_multiview_loss",
]


class VICRegOutput(NamedTuple):
    """The weighted total and its three unweighted terms (all float32 scalar tensors).

    ``loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance``.
    Only ``loss`` needs to be back-propagated; the terms share its graph and are there for logging.
    """

    loss: Tensor
    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def _check_embeddings(z: Tensor, name: str, *, min_rows: int = 2, check_finite: bool = True) -> None:
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (batch, dim) tensor, got shape {tuple(z.shape)}; "
            "flatten the embeddings first, e.g. z.flatten(1)"
        )
    if not z.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    if z.shape[0] < min_rows:
        raise ValueError(
            f"{name} has a batch of {z.shape[0]}; the variance and covariance terms need at least "
            f"{min_rows} samples (unbiased variance divides by N - 1): use a larger batch"
        )
    if z.shape[1] < 1:
        raise ValueError(f"{name} has no embedding dimensions (shape {tuple(z.shape)})")
    if check_finite and not bool(torch.isfinite(z).all()):
        raise ValueError(
            f"{name} contains NaN or infinite values: the encoder diverged or the input was bad; "
            "lower the learning rate, check the data, or use float32/bf16 instead of fp16"
        )


def _check_coefficients(**values: float) -> None:
    for name, value in values.items():
        if name == "eps":
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"eps must be a finite number > 0 (it keeps sqrt differentiable), got {value}")
        elif not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _check_gather(gather: object) -> None:
    if not (isinstance(gather, bool) or gather == "sharded"):
        raise ValueError(
            f"gather must be True (global batch, gathered), 'sharded' (global batch, work shared out) or False "
            f"(per-process statistics), got {gather!r}"
        )


def _float32(z: Tensor) -> Tensor:
    """Statistics are always computed in float32 (or float64 if given), never in bf16/fp16."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def invariance_term(z_a: Tensor, z_b: Tensor) -> Tensor:
    """Mean squared error between the two branches, averaged over batch and dimensions."""
    return F.mse_loss(_float32(z_a), _float32(z_b))


def variance_term(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Hinge on the per-dimension standard deviation: ``mean_d relu(gamma - sqrt(Var(z_d) + eps))``.

    ``Var`` is the unbiased variance over the batch (``N - 1``), as in the official code. This is the term of
    *one* branch; :func:`vicreg_loss` averages the two branches.
    """
    z = _float32(z)
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)
    return F.relu(gamma - std).mean()


class _OffDiagSqSum(torch.autograd.Function):
    """``sum_{i != j} (Zc^T Zc)_ij^2`` of an already centred ``Zc``, with a hand-written backward.

    Forward, whichever product is cheaper for the shapes (``min(N, D)^2 * max(N, D)`` multiply-adds):

    * ``N >= D``: the ``D x D`` product ``M = Zc^T Zc`` with its diagonal zeroed in place (no mask, no copy),
      so the off-diagonal squares are summed directly, with no cancellation.
    * ``N < D``: the ``N x N`` Gram matrix ``G = Zc Zc^T`` has the same Frobenius norm as ``M``; the diagonal
      of ``M`` is the per-column sum of squares ``s``, whose squares are subtracted: ``||G||^2 - ||s||^2``.
      The rounding error of that subtraction is ~1e-7 of ``||M||_F^2``; since ``rank(M) < N < D`` the
      off-diagonal part cannot be a vanishing share of it (tests/test_loss.py measures it against float64).

    Backward is one more product instead of autograd's two: ``d/dZc = 4 Zc M_offdiag``, which is
    ``4 (G Zc - Zc * s)`` in the Gram form.
    """

    @staticmethod
    def forward(ctx, zc: Tensor) -> Tensor:
        n, d = zc.shape
        if n >= d:
            m = zc.T @ zc
            m.diagonal().zero_()
            ctx.save_for_backward(zc, m)
            ctx.gram = False
            return m.square().sum()
        g = zc @ zc.T
        s = zc.square().sum(dim=0)
        ctx.save_for_backward(zc, g, s)
        ctx.gram = True
        return (g.square().sum() - s.square().sum()).clamp_min(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> Tensor:
        if ctx.gram:
            zc, g, s = ctx.saved_tensors
            grad = torch.addcmul(g @ zc, zc, s, value=-1.0)
        else:
            zc, m = ctx.saved_tensors
            grad = zc @ m
        return grad.mul_(4 * grad_out)


def _offdiag_sq_sum(z: Tensor) -> Tensor:
    """``sum_{i != j} (Zc^T Zc)_ij^2`` for the centred batch (unnormalised); see :class:`_OffDiagSqSum`."""
    return _OffDiagSqSum.apply(z - z.mean(dim=0))


def covariance_term(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariance entries, divided by ``D`` (one branch).

    The covariance is that of the centred batch divided by ``N - 1``, as in the official code.
    """
    z = _float32(z)
    n, d = z.shape
    # Keep the scaling out of the matmul so the large squares stay in range: divide once at the end.
    return _offdiag_sq_sum(z) / ((n - 1) ** 2 * d)


# ---------------------------------------------------------------------------------------- sharded statistics
# Under ``gather="sharded"`` process k holds the rows ``Z_k`` (n x D) of the global batch ``Z`` (N = world * n
# rows). Every collective below is summed over processes and every process ends up with the same loss, so the
# exact adjoint of each collective (a sum of the incoming gradients over processes) hands process k
# ``world * dL/dZ_k``; DDP's averaging divides by ``world``: the full-batch gradient, as with the all-gather.


def _sharded_uses_gram(n: int, world: int, d: int, flop_per_byte: float = 100.0) -> bool:
    """Whether the row-block Gram form is cheaper than the all-reduced ``D x D`` form for these shapes.

    Per process and branch (forward + backward, float32): Gram ``4 n N D`` flops and an all-gather of
    ``(world - 1) n D`` floats; ``D x D`` ``4 n D^2`` flops and a ring all-reduce of ``2 (world - 1) / world D^2``
    floats. Bytes are weighed as ``flop_per_byte`` flops (fp32 matmul rate over interconnect bandwidth, ~100 on
    an NVLink GPU node). ``benchmarks/loss.py --distributed`` tabulates both.
    """
    big_n = n * world
    gram = 4 * n * big_n * d + flop_per_byte * 4 * (world - 1) * n * d
    square = 4 * n * d * d + flop_per_byte * 4 * 2 * (world - 1) / world * d * d
    return gram <= square


class _ShardedGramSqSum(torch.autograd.Function):
    """``||Zc^T Zc||_F^2 - ||s||^2`` of the global centred batch from this process's row block ``Zc_k Zc^T``.

    Batched over branches: ``zc_local`` is ``(B, n, D)`` and the result ``(B,)``. ``s`` (given, global,
    detached, ``(B, D)``) is the per-column sum of squares of ``Zc``, i.e. the diagonal of ``Zc^T Zc``.
    Forward: an all-gather of the centred rows, ``2 n N D`` flops per branch and an all-reduce of ``B`` scalars;
    backward, by hand as in :class:`_OffDiagSqSum`: the rows of ``4 (G Zc - Zc * s)`` this process owns are
    ``4 (G_k Zc - Zc_k * s)``, which needs only the saved row block ``G_k`` (another ``2 n N D``) and an
    all-reduce of the ``B`` upstream scalars, not the reduce-scatter of an ``N x D`` gradient that autograd's
    form would need.
    """

    @staticmethod
    def forward(ctx, zc_local: Tensor, col_sq: Tensor) -> Tensor:
        b, n, d = zc_local.shape
        # (world * B, n, D) in rank order -> (B, N, D) with each branch's rows in rank order
        zc = all_gather_no_grad(zc_local).view(-1, b, n, d).transpose(0, 1).reshape(b, -1, d)
        g = torch.bmm(zc_local, zc.transpose(1, 2))
        total = g.square().sum(dim=(1, 2))
        dist.all_reduce(total)
        ctx.save_for_backward(zc_local, zc, g, col_sq)
        return (total - col_sq.square().sum(dim=1)).clamp_min(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        zc_local, zc, g, col_sq = ctx.saved_tensors
        upstream = grad_out.clone()
        dist.all_reduce(upstream)  # the exact adjoint: every process's use of the global value
        grad = torch.addcmul(torch.bmm(g, zc), zc_local, col_sq[:, None, :], value=-1.0)
        return grad.mul_(4 * upstream[:, None, None]), None


class _ShardedCovSqSum(torch.autograd.Function):
    """``sum_{i != j} (Zc^T Zc)_ij^2`` of the global centred batch from the all-reduced partial ``Zc_k^T Zc_k``.

    Batched over branches (``(B, n, D)`` in, ``(B,)`` out). Forward: ``2 n D^2`` flops per branch and an
    all-reduce of the ``B x D x D`` matrices; backward: ``4 Zc_k M_offdiag`` (another ``2 n D^2``) and an
    all-reduce of ``B`` scalars.
    """

    @staticmethod
    def forward(ctx, zc_local: Tensor) -> Tensor:
        m = torch.bmm(zc_local.transpose(1, 2), zc_local)
        dist.all_reduce(m)
        m.diagonal(dim1=1, dim2=2).zero_()
        ctx.save_for_backward(zc_local, m)
        return m.square().sum(dim=(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> Tensor:
        zc_local, m = ctx.saved_tensors
        upstream = grad_out.clone()
        dist.all_reduce(upstream)
        return torch.bmm(zc_local, m).mul_(4 * upstream[:, None, None])


def _sharded_variance_covariance(
    z: Tensor, gamma: float, eps: float, form: Literal["auto", "gram", "square"] = "auto"
) -> tuple[Tensor, Tensor]:
    """Per branch :func:`variance_term` and :func:`covariance_term` of the global batch, from this process's
    rows ``z`` of shape ``(B, n, D)`` (the branches stacked, so that each collective serves all of them).

    Returns two ``(B,)`` tensors. ``form`` forces the covariance's row-block Gram or all-reduced ``D x D`` form
    (tests); ``auto`` picks the cheaper (:func:`_sharded_uses_gram`).
    """
    _, n, d = z.shape
    world = dist.get_world_size()
    big_n = n * world
    zc = z - (all_reduce_with_grad(z.sum(dim=1)) / big_n)[:, None, :]  # centred on the global mean
    col_sq = all_reduce_with_grad(zc.square().sum(dim=1))  # (N - 1) * global variance: the diagonal of Zc^T Zc
    variance = F.relu(gamma - torch.sqrt(col_sq / (big_n - 1) + eps)).mean(dim=1)
    if form == "gram" or (form == "auto" and _sharded_uses_gram(n, world, d)):
        offdiag = _ShardedGramSqSum.apply(zc, col_sq.detach())
    else:
        offdiag = _ShardedCovSqSum.apply(zc)
    return variance, offdiag / ((big_n - 1) ** 2 * d)


def _global_mean_value(x: Tensor) -> Tensor:
    """``x`` with the value of its mean over processes and the gradient of the local ``x``.

    For the invariance term: the local MSE's gradient, averaged by DDP, is already the full-batch one; only the
    value (for logging, and the total) is made the full batch's.
    """
    mean = x.detach().clone()
    dist.all_reduce(mean)
    return x + (mean / dist.get_world_size() - x.detach())


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    *,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: Gather = True,
    check_finite: bool = True,
) -> VICRegOutput:
    """The VICReg loss of two batches of embeddings ``z_a``, ``z_b`` of shape ``(N, D)``.

    Args:
        z_a, z_b: expander outputs of the two views (any float dtype; computed in float32, autocast is
            disabled inside).
        sim_coeff, std_coeff, cov_coeff: weights of invariance, variance and covariance (paper: 25, 25, 1).
        gamma: target standard deviation of each dimension.
        eps: added to the variance before the square root.
        gather: under ``torch.distributed``, compute variance and covariance on the global batch (``True``,
            the official behaviour: every process gathers it and repeats the whole computation);
            ``"sharded"``: the same statistics with the work divided among the processes, and every term
            (invariance included) returned with the full batch's value on every process; ``False`` keeps
            per-process statistics. Ignored in a single process.
        check_finite: raise ``ValueError`` on NaN/inf embeddings. This reads one flag back from the device
            (a host sync); a training loop that guards the loss itself may turn it off.

    Returns:
        :class:`VICRegOutput` with the weighted ``loss`` and the unweighted ``invariance``, ``variance``
        (mean of the two branches) and ``covariance`` (sum of the two branches).
    """
    _check_embeddings(z_a, "z_a", check_finite=check_finite)
    _check_embeddings(z_b, "z_b", check_finite=check_finite)
    if z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}; "
            "both branches must embed the same samples into the same dimension"
        )
    _check_coefficients(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff, gamma=gamma, eps=eps)
    _check_gather(gather)

    with torch.autocast(device_type=z_a.device.type, enabled=False):
        z_a, z_b = _float32(z_a), _float32(z_b)
        invariance = invariance_term(z_a, z_b)
        if gather == "sharded" and is_distributed():
            invariance = _global_mean_value(invariance)
            variances, covariances = _sharded_variance_covariance(torch.stack([z_a, z_b]), gamma, eps)
            variance, covariance = variances.mean(), covariances.sum()
        else:
            if gather:
                z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
            variance = (variance_term(z_a, gamma, eps) + variance_term(z_b, gamma, eps)) / 2
            covariance = covariance_term(z_a) + covariance_term(z_b)
        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return VICRegOutput(loss, invariance, variance, covariance)


def variance_covariance_loss(
    z: Tensor,
    *,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: Gather = True,
    check_finite: bool = True,
) -> Tensor:
    """The VC regulariser alone, for one branch: ``std_coeff * variance + cov_coeff * covariance``.

    Add it to another method's loss (the paper's Table 4 adds it to BYOL and SimSiam) to prevent collapse.
    Statistics are computed in float32 on the global batch when ``gather`` (``True`` or ``"sharded"``, as in
    :func:`vicreg_loss`) and running distributed.
    """
    _check_embeddings(z, "z", check_finite=check_finite)
    _check_coefficients(std_coeff=std_coeff, cov_coeff=cov_coeff, gamma=gamma, eps=eps)
    _check_gather(gather)
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = _float32(z)
        if gather == "sharded" and is_distributed():
            variance, covariance = _sharded_variance_covariance(z[None], gamma, eps)
            return (std_coeff * variance + cov_coeff * covariance)[0]
        if gather:
            z = gather_with_grad(z)
        return std_coeff * variance_term(z, gamma, eps) + cov_coeff * covariance_term(z)


class VICRegLoss(nn.Module):
    """``nn.Module`` form of :func:`vicreg_loss`; the coefficients are fixed at construction.

    >>> criterion = VICRegLoss()
    >>> out = criterion(torch.randn(8, 16), torch.randn(8, 16))
    >>> out.loss.shape
    torch.Size([])
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        gather: Gather = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        _check_coefficients(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff, gamma=gamma, eps=eps)
        _check_gather(gather)
        self.sim_coeff = sim_coeff
        self.std_coeff = std_coeff
        self.cov_coeff = cov_coeff
        self.gamma = gamma
        self.eps = eps
        self.gather = gather
        self.check_finite = check_finite

    def forward(self, z_a: Tensor, z_b: Tensor) -> VICRegOutput:
        return vicreg_loss(
            z_a,
            z_b,
            sim_coeff=self.sim_coeff,
            std_coeff=self.std_coeff,
            cov_coeff=self.cov_coeff,
            gamma=self.gamma,
            eps=self.eps,
            gather=self.gather,
            check_finite=self.check_finite,
        )

    def extra_repr(self) -> str:
        return (
            f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}, "
            f"gamma={self.gamma}, eps={self.eps}, gather={self.gather}"
        )


# --------------------------------------------------------------------------------------------- multi-crop

MULTIVIEW_WEIGHTINGS = ("mean", "vicregl")
"""The weightings of :func:`vicreg_multiview_loss`; they differ only in the scale of the covariance term."""


def _fold_sum(terms: list[Tensor]) -> Tensor:
    """``t0 + t1 + ...`` left to right (the exact order :func:`vicreg_loss` adds its two branches in)."""
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def vicreg_multiview_loss(
    global_embeddings: list[Tensor] | tuple[Tensor, ...],
    local_embeddings: list[Tensor] | tuple[Tensor, ...] = (),
    *,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: bool = True,
    weighting: str = "mean",
    check_finite: bool = True,
) -> VICRegOutput:
    """The VICReg loss of several views of one batch: global views and (multi-crop) local views.

    Every view is an ``(N, D)`` batch of expander outputs of the same ``N`` samples (row ``n`` of each view
    comes from image ``n``). With ``G`` global and ``L`` local views, ``V = G + L``:

    * invariance: the mean of :func:`invariance_term` over the ``G * (V - 1)`` ordered pairs (global view
      ``i``, any other view ``j``), as VICRegL's global loss (facebookresearch/VICRegL ``main_vicregl.py``
      ``global_loss``, commit 803ae4c, l. 421-446; lightly ``VICRegLLoss._global_invariance_loss``): a pair of
      global views counts twice (both orders), a global-local pair once, and two local views are never
      compared;
    * variance: the mean over the ``V`` views of :func:`variance_term`, each on its global batch;
    * covariance: :func:`covariance_term` of each view on its global batch, summed and scaled by ``2 / V``
      (``weighting="mean"``: the mean over views times 2, the official loss's sum over its two branches) or by
      ``1 / V`` (``weighting="vicregl"``: the mean over views, as VICRegL's global loss).

    With two global views and no local ones, ``weighting="mean"`` is :func:`vicreg_loss` of the pair (same
    values and gradients: the official code averages the variance of its two branches and adds their
    covariances). ``weighting="vicregl"`` is VICRegL's global criterion; on a pair it is :func:`vicreg_loss`
    with ``cov_coeff / 2``, i.e. it halves the covariance weight of the paper's recipe. Any number ``G >= 1`` of
    global views is accepted, with at least two views in all.

    Args:
        global_embeddings: the ``G`` global views' embeddings, ``(N, D)`` each (view A's first).
        local_embeddings: the ``L`` local views' embeddings, ``(N, D)`` each (may be empty).
        sim_coeff, std_coeff, cov_coeff, gamma, eps, gather, check_finite: as :func:`vicreg_loss`; with
            ``gather`` each view's variance and covariance see the global batch of that view.
        weighting: ``"mean"`` (default) or ``"vicregl"``, see above.

    Returns:
        :class:`VICRegOutput`: the weighted ``loss`` and the unweighted ``invariance`` (mean over pairs),
        ``variance`` (mean over views) and ``covariance`` (as weighted above).
    """
    if weighting not in MULTIVIEW_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {MULTIVIEW_WEIGHTINGS}, got {weighting!r}")
    globals_, locals_ = list(global_embeddings), list(local_embeddings)
    if not globals_ or len(globals_) + len(locals_) < 2:
        raise ValueError(
            f"vicreg_multiview_loss needs at least one global view and two views in all, got {len(globals_)} "
            f"global and {len(locals_)} local"
        )
    names = [f"global_embeddings[{i}]" for i in range(len(globals_))]
    names += [f"local_embeddings[{i}]" for i in range(len(locals_))]
    views = globals_ + locals_
    for z, name in zip(views, names, strict=True):
        _check_embeddings(z, name, check_finite=check_finite)
        if z.shape != views[0].shape:
            raise ValueError(
                f"{name} has shape {tuple(z.shape)} but {names[0]} has {tuple(views[0].shape)}; every view "
                "must embed the same samples into the same dimension (local crops: batch them per crop)"
            )
    _check_coefficients(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff, gamma=gamma, eps=eps)

    g, v = len(globals_), len(views)
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        views = [_float32(z) for z in views]
        # Each unordered pair once; a pair of global views stands for its two orders (MSE is symmetric).
        pairs = [
            invariance_term(views[i], views[j]) * (2.0 if j < g else 1.0) for i in range(g) for j in range(i + 1, v)
        ]
        invariance = _fold_sum(pairs) / (g * (v - 1))
        if gather:
            views = [gather_with_grad(z) for z in views]
        variance = _fold_sum([variance_term(z, gamma, eps) for z in views]) / v
        covariance = _fold_sum([covariance_term(z) for z in views]) * ((2.0 if weighting == "mean" else 1.0) / v)
        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return VICRegOutput(loss, invariance, variance, covariance)
