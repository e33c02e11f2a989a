"""Optimisers and the learning-rate schedule.

* :class:`LARS` is the official VICReg optimiser (facebookresearch/vicreg ``main_vicreg.py``): SGD with
  momentum where each weight's update is rescaled by the trust ratio ``eta * ||w|| / ||g + wd * w||``;
  biases and normalisation parameters (the 1-D tensors) get neither weight decay nor the trust ratio.
* :func:`warmup_cosine` is the official per-step schedule as a pure function of the step: linear warmup
  from 0, then a cosine from the peak to ``0.001 x peak``. :func:`scaled_lr` is ``base_lr x batch / 256``.
* :func:`build_optimizer` gives LARS, AdamW or SGD; AdamW and SGD exclude biases and norm parameters from
  weight decay through :func:`param_groups`.

The training loop sets the rate each step: ``set_lr(opt, warmup_cosine(step, total, warmup, peak))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LARS",
    "OPTIMIZERS",
    "build_optimizer",
    "is_bias_or_norm",
    "param_groups",
    "scaled_lr",
    "set_lr",
    "warmup_cosine",
]


def is_bias_or_norm(p: Tensor) -> bool:
    """Biases and normalisation weights/biases: the tensors with fewer than 2 dimensions.

    The official ``exclude_bias_and_norm`` tests ``p.ndim == 1``; we also exclude 0-d tensors (learnable
    scalars such as a temperature), which a ResNet or the expander never has.
    """
    return p.ndim < 2


def _check_finite_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class LARS(torch.optim.Optimizer):
    """LARS exactly as in the official VICReg code (You et al., 2017, as used by Barlow Twins and VICReg).

    For each parameter ``w`` with gradient ``g`` (``mu`` is the momentum buffer, zero at the start)::

        if not excluded(w): g = g + weight_decay * w
        if not excluded(w): g = g * (eta * ||w|| / ||g||  if ||w|| > 0 and ||g|| > 0  else 1)
        mu = momentum * mu + g
        w  = w - lr * mu

    where ``excluded(w)`` is :func:`is_bias_or_norm` when ``exclude_bias_and_norm`` (the official setting),
    else never. The trust ratio is computed on the device with ``torch.where``: no host synchronisation.

    Args:
        params: parameters or parameter groups; every group option below may be set per group.
        lr: learning rate (the training loop usually overwrites it each step, see :func:`set_lr`).
        weight_decay: L2 penalty added to the gradient before the trust ratio (official: 1e-6).
        momentum: momentum factor (official: 0.9).
        eta: trust coefficient (official: 0.001).
        exclude_bias_and_norm: skip weight decay and the trust ratio for 1-D (and 0-d) tensors.
        clip_lr: the LARC variant solo-learn uses (with ``eta=0.02``): a layer's rate is
            ``min(eta * ||w|| / ||g||, lr)`` instead of ``lr * eta * ||w|| / ||g||``, so it never exceeds the
            global rate; ``g`` is multiplied by ``min(eta * ||w|| / ||g||, lr) / lr`` (by 1 while ``lr`` is 0).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        eta: float = 0.001,
        exclude_bias_and_norm: bool = True,
        clip_lr: bool = False,
    ) -> None:
        _check_finite_nonneg("lr", lr)
        _check_finite_nonneg("weight_decay", weight_decay)
        _check_finite_nonneg("eta", eta)
        if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            eta=eta,
            exclude_bias_and_norm=exclude_bias_and_norm,
            clip_lr=clip_lr,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum, eta = group["lr"], group["weight_decay"], group["momentum"], group["eta"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                if not (group["exclude_bias_and_norm"] and is_bias_or_norm(p)):
                    g = g.add(p, alpha=wd)  # a new tensor: p.grad itself is left untouched
                    ratio = _trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(g), eta)
                    if group.get("clip_lr", False) and lr > 0:
                        ratio = ratio.clamp(max=lr) / lr
                    g.mul_(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                mu = state["mu"]
                mu.mul_(momentum).add_(g)
                p.add_(mu, alpha=-lr)
        return loss


def _trust_ratio(param_norm: Tensor, update_norm: Tensor, eta: float) -> Tensor:
    """``eta * ||w|| / ||g||`` if both norms are positive, else 1; computed on the device, no host sync."""
    one = torch.ones_like(param_norm)
    return torch.where(param_norm > 0, torch.where(update_norm > 0, eta * param_norm / update_norm, one), one)


# --------------------------------------------------------------------------------------------- groups


def param_groups(model: nn.Module | Iterable[Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weights with ``weight_decay`` and biases/norm parameters without.

    Only parameters with ``requires_grad`` are kept; an empty group is left out. The split is
    :func:`is_bias_or_norm` (``ndim < 2``), the same rule LARS uses.
    """
    _check_finite_nonneg("weight_decay", weight_decay)
    params = model.parameters() if isinstance(model, nn.Module) else model
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for p in params:
        if p.requires_grad:
            (no_decay if is_bias_or_norm(p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


OPTIMIZERS = ("lars", "adamw", "sgd")


def build_optimizer(
    name: str,
    model: nn.Module | Iterable[Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    eta: float = 0.001,
    clip_lr: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """The optimiser ``name`` over the trainable parameters of ``model``.

    * ``"lars"``: :class:`LARS` (``momentum``, ``eta``, ``clip_lr``; biases and norm parameters excluded inside it);
    * ``"adamw"``: ``torch.optim.AdamW`` (``betas``) with :func:`param_groups`;
    * ``"sgd"``: ``torch.optim.SGD`` (``momentum``) with :func:`param_groups`.

    The official VICReg setting is ``build_optimizer("lars", model, lr=scaled_lr(0.2, batch),
    weight_decay=1e-6)`` with :func:`warmup_cosine` setting the rate each step.
    """
    if name == "lars":
        params = model.parameters() if isinstance(model, nn.Module) else model
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters")
        return LARS(trainable, lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, clip_lr=clip_lr)
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


# --------------------------------------------------------------------------------------------- schedule


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule of the paper: ``base_lr * batch_size / 256`` (global batch size)."""
    _check_finite_nonneg("base_lr", base_lr)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (the global batch), got {batch_size!r}")
    return base_lr * batch_size / 256


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_ratio: float = 0.001) -> float:
    """The learning rate at optimiser step ``step`` (0-based), as the official ``adjust_learning_rate``.

    ``peak_lr * step / warmup_steps`` during the first ``warmup_steps`` steps, then a half cosine from
    ``peak_lr`` to ``final_ratio * peak_lr`` at ``step == total_steps``; later steps keep the final rate.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}], got {warmup_steps!r}")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    _check_finite_nonneg("peak_lr", peak_lr)
    if not isinstance(final_ratio, (int, float)) or not 0 <= final_ratio <= 1:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio!r}")
    end_lr = peak_lr * final_ratio
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if step >= total_steps:
        return end_lr
    q = 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
    return peak_lr * q + end_lr * (1 - q)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (the official code uses one rate for all groups)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
