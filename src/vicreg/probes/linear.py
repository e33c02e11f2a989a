"""Linear probe on frozen (cached) features, and class-balanced label fractions for semi-supervised probes.

The probe is multinomial logistic regression trained with minibatch SGD + momentum under a cosine learning-rate
schedule, on features standardised with the training set's per-dimension mean and standard deviation. It works
on features already in memory, so it costs seconds on a CPU for 60k x 256 features. The test accuracy is
measured after every epoch: ``last`` (after the final epoch) is the honest number; ``best`` is the maximum over
epochs and peeks at the test set (it is reported because other code bases report it, never as the result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ProbeResult", "balanced_subset", "linear_probe", "softmax_regression_grad", "standardize"]


@dataclass(frozen=True)
class ProbeResult:
    """Accuracies in %; ``curve`` holds the test top-1 after each epoch."""

    last_top1: float
    last_top5: float
    best_top1: float
    best_epoch: int
    train_top1: float
    curve: list[float] = field(repr=False)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "last_top1": self.last_top1,
            "last_top5": self.last_top5,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "train_top1": self.train_top1,
        }


def standardize(train: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """``(x - mean) / std`` with the per-dimension statistics of ``train``, applied to ``train`` and ``others``.

    Constant dimensions (std below ``eps``) are centred and left unscaled.
    """
    train = train.float()
    mean = train.mean(0)
    std = train.std(0, unbiased=False)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return tuple((x.float() - mean) / std for x in (train, *others))


def _check(features: Tensor, labels: Tensor, what: str) -> None:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"{what}: need features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"{what}: no rows")


def softmax_regression_grad(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of the mean cross-entropy of ``softmax(x @ weight.T + bias)`` w.r.t. ``weight`` and ``bias``.

    Written out (``(softmax - onehot) / B``) rather than through autograd: the probe takes thousands of tiny
    steps, and this halves the number of kernels per step.
    """
    p = torch.softmax(torch.addmm(bias, x, weight.T), dim=1)
    p[torch.arange(y.shape[0], device=y.device), y] -= 1
    p /= y.shape[0]
    return p.T @ x, p.sum(0)


@torch.no_grad()
def _accuracy(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1).float().mean() * 100


@torch.no_grad()
def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    batch_size: int = 1024,
    seed: int = 0,
    num_classes: int | None = None,
) -> ProbeResult:
    """Train a linear classifier on standardised ``train_features`` and test it after every epoch.

    ``lr`` is the peak rate of the cosine schedule (per step, down to 0), for a batch of ``batch_size``; the
    batch order comes from ``seed``. Runs on the device of the features.
    """
    _check(train_features, train_labels, "train")
    _check(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}"
        )
    if epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0, got {epochs}, {batch_size}, {lr}, "
            f"{weight_decay}"
        )
    if int(train_labels.min()) < 0:
        raise ValueError("train labels must be >= 0 (unlabelled rows, -1, must be removed before the probe)")
    classes = num_classes or int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    x_train, x_test = standardize(train_features, test_features)
    y_train, y_test = train_labels.long().to(x_train.device), test_labels.long().to(x_test.device)
    n, dim = x_train.shape
    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch

    generator = torch.Generator().manual_seed(seed)
    on_cpu = x_train.device.type == "cpu"
    x_np, y_np = (x_train.numpy(), y_train.numpy()) if on_cpu else (None, None)
    weight = torch.zeros(classes, dim, device=x_train.device)
    bias = torch.zeros(classes, device=x_train.device)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    curve = torch.zeros(epochs, device=x_train.device)
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for idx in order.split(batch_size):
            if x_np is not None and y_np is not None:  # numpy's row gather: no thread-pool wake-up per batch
                rows = idx.numpy()
                xb, yb = torch.from_numpy(x_np[rows]), torch.from_numpy(y_np[rows])
            else:
                idx = idx.to(x_train.device)
                xb, yb = x_train[idx], y_train[idx]
            grad_w, grad_b = softmax_regression_grad(xb, yb, weight, bias)
            grad_w.add_(weight, alpha=weight_decay)
            buf_w.mul_(momentum).add_(grad_w)
            buf_b.mul_(momentum).add_(grad_b)
            rate = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            weight.sub_(buf_w, alpha=rate)
            bias.sub_(buf_b, alpha=rate)
            step += 1
        curve[epoch] = _accuracy(torch.addmm(bias, x_test, weight.T), y_test, 1)
    last5 = float(_accuracy(torch.addmm(bias, x_test, weight.T), y_test, 5))
    train1 = float(_accuracy(torch.addmm(bias, x_train, weight.T), y_train, 1))
    values = curve.tolist()  # one host sync for the whole curve
    best = max(range(epochs), key=lambda e: values[e])
    return ProbeResult(values[-1], last5, values[best], best + 1, train1, values)


def balanced_subset(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Sorted indices of a class-balanced, seeded ``fraction`` of ``labels`` (at least one per class).

    Each class ``c`` with ``n_c`` examples contributes ``max(1, round(fraction * n_c))`` of them, drawn by a
    permutation from ``seed``; the same labels, fraction and seed always give the same indices.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = labels.cpu().long()
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        members = (labels == c).nonzero().flatten()
        count = max(1, round(fraction * members.numel()))
        picked.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    if not picked:
        raise ValueError("no labelled rows to draw a subset from")
    return torch.cat(picked).sort().values
