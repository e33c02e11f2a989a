"""Process-group helpers: torchrun detection and an all-gather that lets gradients flow back.

Everything here is a no-op in a single process, so the same training code runs with and without torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.distributed.nn.functional import all_gather

try:  # recent torch: the functional collective, whose backward is a reduce-scatter
    from torch.distributed._functional_collectives import all_gather_single_autograd
except ImportError:  # older torch
    all_gather_single_autograd = None  # type: ignore[assignment]

__all__ = [
    "DistInfo",
    "all_gather_no_grad",
    "all_reduce_with_grad",
    "gather_with_grad",
    "get_dist_info",
    "is_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, and ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True when a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_dist_info() -> DistInfo:
    """Rank and world size from the process group, or from torchrun's environment before it is created."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    env = os.environ
    return DistInfo(
        int(env.get("RANK", 0)),
        int(env.get("WORLD_SIZE", 1)),
        int(env.get("LOCAL_RANK", 0)),
    )


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, differentiably.

    The backward pass sums the gradient of every rank's copy of the gathered tensor and returns to each rank
    the slice it owns (a reduce-scatter). With DDP's gradient averaging, a loss that every rank computes on
    the gathered batch thus gets exactly the full-batch gradient. Uses PyTorch's own autograd-aware
    collective (``torch.distributed.nn.functional.all_gather``). Every rank must pass the same shape.
    Returns ``x`` unchanged outside ``torch.distributed`` or with one process.
    """
    if not is_distributed():
        return x
    if all_gather_single_autograd is None:  # older torch: the autograd-aware collective of torch.distributed.nn
        return torch.cat(all_gather(x), dim=0)
    group = dist.group.WORLD
    assert group is not None
    return all_gather_single_autograd(x.contiguous(), 0, group)


# torch >= 2.10 names it all_gather_single and deprecates the older name
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the adjoint of a sum that every process receives is again a sum over processes."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """The sum of ``x`` over every process, differentiably (same as ``torch.distributed.nn.all_reduce``).

    The backward pass all-reduces the incoming gradient: if every process computes the same loss ``L`` of the
    sum, each one gets ``world_size * dL/dx``, which DDP's averaging turns back into ``dL/dx``. Returns ``x``
    unchanged outside ``torch.distributed`` or with one process.
    """
    if not is_distributed():
        return x
    return _AllReduceSum.apply(x)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, outside autograd (every rank passes the same shape)."""
    if not is_distributed():
        return x
    x = x.detach().contiguous()
    out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
    _all_gather_single(out, x)
    return out
