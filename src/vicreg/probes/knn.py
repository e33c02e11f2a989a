"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO protocol).

Cosine similarity between L2-normalised features; each of the ``k`` neighbours votes for its class with weight
``exp(similarity / temperature)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Class scores ``(N_test, num_classes)`` of the temperature-weighted kNN vote.

    Processes ``chunk`` test rows at a time so memory stays at ``chunk x N_train``.
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"features must be 2-D with the same width, got {tuple(train_features.shape)} and "
            f"{tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"need one label per training feature, got {tuple(train_labels.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = min(k, train_features.shape[0])
    classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.long()
    scores = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], classes, device=sim.device)
        votes.scatter_add_(1, labels[top_idx], (top_sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    topk: tuple[int, ...] = (1, 5),
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (in %) of the weighted kNN with one ``k``: :func:`knn_evaluate` with ``ks=(k,)``."""
    result = knn_evaluate(
        train_features, train_labels, test_features, test_labels, ks=(k,), temperature=temperature, topk=topk
    )
    return result[f"k{k}"]


@torch.no_grad()
def knn_evaluate(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    topk: tuple[int, ...] = (1, 5),
    chunk: int = 1024,
) -> dict[str, dict[str, float]]:
    """Top-1 / top-5 accuracy (in %) for several ``k`` at the cost of one: ``{"k20": {"top1": .., "top5": ..}}``.

    The neighbours are found once for the largest ``k`` (sorted by similarity), and each smaller ``k`` votes
    with its first ``k`` of them, which is exactly :func:`knn_accuracy` with that ``k``.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive neighbour counts, got {ks}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"features must be 2-D with the same width, got {tuple(train_features.shape)} and "
            f"{tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError("need one label per feature row (train and test)")
    classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    k_max = min(max(ks), train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    truth = test_labels.long().to(train.device)
    ranks = min(max(topk), classes)
    hits = {k: torch.zeros(len(topk), dtype=torch.float64) for k in ks}
    for start in range(0, test.shape[0], chunk):
        top_sim, top_idx = (test[start : start + chunk] @ train.T).topk(k_max, dim=1)
        weights, neighbour_labels = (top_sim / temperature).exp(), labels[top_idx]
        y = truth[start : start + chunk].view(-1, 1)
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(top_sim.shape[0], classes, device=top_sim.device)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            ranked = votes.topk(ranks, dim=1).indices == y
            hits[k] += torch.stack([ranked[:, :t].any(dim=1).sum() for t in topk]).double().cpu()
    n = test.shape[0]
    return {
        f"k{k}": {f"top{t}": 100.0 * float(h) / n for t, h in zip(topk, hits[k].tolist(), strict=True) if t <= classes}
        for k in ks
    }
