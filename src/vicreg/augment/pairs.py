"""Views for two-modality pairs: branch A and branch B each see one view of their own input.

A pair batch is a :class:`TensorPair` ``(a, b)`` (e.g. an image and its table row, or two sensors of one
recording): :class:`PairViews` applies branch A's view to ``a`` and branch B's to ``b``, so the two VICReg
branches (two encoders, see :class:`vicreg.VICReg` ``backbone_b``) learn what the two inputs share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["OneView", "PairViews", "TensorPair"]

OneView = Callable[[Tensor, "torch.Generator | None"], Tensor]
"""One view of a batch: ``view(x, generator) -> Tensor``."""


class TensorPair(NamedTuple):
    """The two inputs of a pair batch, row ``i`` of ``a`` paired with row ``i`` of ``b``."""

    a: Tensor
    b: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TensorPair:
        return TensorPair(self.a.to(device, non_blocking=non_blocking), self.b.to(device, non_blocking=non_blocking))


class PairViews:
    """``PairViews(view_a, view_b)(pair) -> (view_a(pair.a), view_b(pair.b))``.

    Each argument is a callable ``(x, generator) -> view``, e.g. for signals
    ``lambda x, g: signal_views.view(x, signal_views.view_a, g)``.
    """

    def __init__(self, view_a: OneView, view_b: OneView) -> None:
        self.view_a, self.view_b = view_a, view_b

    def __call__(self, pair: TensorPair, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(f"PairViews expects a (a, b) pair of batches, got {type(pair).__name__}")
        a, b = pair
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"the two sides of a pair batch must have the same rows, got {a.shape[0]} and {b.shape[0]}"
            )
        return self.view_a(a, generator), self.view_b(b, generator)
