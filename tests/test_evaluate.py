"""Evaluation: kNN, linear probe, label fractions, cache, data splits (hand-made tensors with known answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vicreg.build import ImageKind, labelled_splits
from vicreg.data import has_splits
from vicreg.eval import EvalSettings, evaluate_features
from vicreg.models import EncoderSpec
from vicreg.probes import balanced_subset, format_table, knn_accuracy, knn_evaluate, linear_probe, standardize
from vicreg.probes.cache import cached, tensor_digest
from vicreg.probes.linear import softmax_regression_grad


def _clusters(n_per: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``classes`` tight clusters around orthogonal directions (known to be perfectly separable)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:classes] * 5
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + spread * torch.randn(labels.numel(), dim, generator=g), labels


# ------------------------------------------------------------------------------------------------ kNN


def test_knn_on_separable_clusters_is_perfect() -> None:
    x, y = _clusters(60, 6, 8, 0.3, seed=0)
    xt, yt = _clusters(15, 6, 8, 0.3, seed=1)
    out = knn_evaluate(x, y, xt, yt, ks=(20, 200))  # 200 > 60 per class: the temperature still decides
    assert out == {"k20": {"top1": 100.0, "top5": 100.0}, "k200": {"top1": 100.0, "top5": 100.0}}


def test_knn_votes_are_temperature_weighted() -> None:
    # one very close neighbour of class 1 against two far ones of class 0: only a small temperature
    # lets the close one win the vote
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.3]])
    sharp = knn_evaluate(train, labels, test, torch.tensor([1]), ks=(3,), temperature=0.07, topk=(1,))
    flat = knn_evaluate(train, labels, test, torch.tensor([1]), ks=(3,), temperature=100.0, topk=(1,))
    assert sharp["k3"]["top1"] == 100.0 and flat["k3"]["top1"] == 0.0


def test_knn_evaluate_matches_knn_accuracy_for_each_k() -> None:
    g = torch.Generator().manual_seed(3)
    x, xt = torch.randn(300, 16, generator=g), torch.randn(70, 16, generator=g)
    y, yt = torch.randint(0, 7, (300,), generator=g), torch.randint(0, 7, (70,), generator=g)
    multi = knn_evaluate(x, y, xt, yt, ks=(5, 20, 200), chunk=32)
    for k in (5, 20, 200):
        assert multi[f"k{k}"] == pytest.approx(knn_accuracy(x, y, xt, yt, k=k))


def test_knn_rejects_bad_input() -> None:
    x, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="same width"):
        knn_evaluate(x, y, torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        knn_evaluate(x, y, x, y, ks=(0,))


# ------------------------------------------------------------------------------------------------ linear


def test_linear_probe_separates_linearly_separable_data() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 12, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:  # labels by a linear rule, with a margin
        x = torch.randn(4 * n, 12, generator=g)
        top2 = (x @ w.T).topk(2, dim=1).values
        x = x[top2[:, 0] - top2[:, 1] > 1.0][:n]
        return x, (x @ w.T).argmax(1)

    (x, y), (xt, yt) = sample(600), sample(200)
    res = linear_probe(x, y, xt, yt, epochs=30, lr=0.5, batch_size=128)
    assert res.train_top1 == 100.0 and res.last_top1 == 100.0
    assert res.best_top1 >= res.last_top1 and len(res.curve) == 30 and 1 <= res.best_epoch <= 30
    assert res.last_top5 == 100.0  # 3 classes: top-5 holds every class
    again = linear_probe(x, y, xt, yt, epochs=30, lr=0.5, batch_size=128)
    assert again.curve == res.curve  # seeded batch order: reproducible


def test_linear_probe_is_at_chance_on_random_labels() -> None:
    g = torch.Generator().manual_seed(1)
    x, xt = torch.randn(400, 8, generator=g), torch.randn(2000, 8, generator=g)
    y, yt = torch.randint(0, 2, (400,), generator=g), torch.randint(0, 2, (2000,), generator=g)
    res = linear_probe(x, y, xt, yt, epochs=20)
    assert 45.0 < res.last_top1 < 55.0


def test_softmax_regression_grad_matches_autograd() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 4, (32,), generator=g)
    w = torch.randn(4, 6, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    torch.nn.functional.cross_entropy(x @ w.T + b, y).backward()
    gw, gb = softmax_regression_grad(x, y, w.detach(), b.detach())
    torch.testing.assert_close(gw, w.grad)
    torch.testing.assert_close(gb, b.grad)


def test_standardize_uses_train_statistics_and_survives_constant_dims() -> None:
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    test = torch.tensor([[2.0, 7.0]])
    s_train, s_test = standardize(train, test)
    torch.testing.assert_close(s_train, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(s_test, torch.tensor([[0.0, 2.0]]))


def test_balanced_subset_is_class_balanced_and_seeded() -> None:
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 200)
    idx = balanced_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [50, 30, 20]
    assert torch.equal(idx, balanced_subset(labels, 0.1, seed=0))
    assert not torch.equal(idx, balanced_subset(labels, 0.1, seed=1))
    assert torch.bincount(labels[balanced_subset(labels, 0.001)]).tolist() == [1, 1, 1]  # at least one each
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0)


def test_evaluate_features_and_table() -> None:
    x, y = _clusters(40, 3, 6, 0.2, seed=0)
    xt, yt = _clusters(10, 3, 6, 0.2, seed=1)
    settings = EvalSettings(k=(5, 50), probe_epochs=5, fractions=(0.1,))
    res = evaluate_features(x, y, xt, yt, settings)
    assert res["knn"]["k5"]["top1"] == 100.0 and res["linear"]["last_top1"] == 100.0
    assert res["semi"]["10%"]["labels"] == 12
    table = format_table({"results": {"vicreg": res}})
    assert "kNN k=5 top1/top5" in table and "100.0" in table and "10% labels" in table


# ------------------------------------------------------------------------------------------------ cache, data


def test_cache_hits_misses_and_recovers_from_a_torn_file(tmp_path: Path) -> None:
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(6.0).view(2, 3)

    key = {"images": tensor_digest(torch.zeros(2, 1, 4, 4, dtype=torch.uint8)), "which": "vicreg"}
    first, hit1 = cached(tmp_path, key, compute)
    second, hit2 = cached(tmp_path, key, compute)
    assert (hit1, hit2) == (False, True) and torch.equal(first, second) and len(calls) == 1
    _, hit3 = cached(tmp_path, {**key, "which": "random_init"}, compute)
    assert not hit3 and len(calls) == 2
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"torn")
    again, hit4 = cached(tmp_path, key, compute)
    assert not hit4 and torch.equal(again, first)
    assert tensor_digest(torch.zeros(3)) != tensor_digest(torch.zeros(3, dtype=torch.float64))


def test_eval_data_without_splits_is_split_80_20_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, images=rng.integers(0, 255, (50, 12, 12), dtype=np.uint8), labels=np.arange(50) % 5)
    assert not has_splits(path) and has_splits("cifar10")
    spec = EncoderSpec("small_cnn", {"in_channels": 1}, 8, "image", (1, 16, 16))
    train, test, note = labelled_splits(ImageKind(), spec, str(path), seed=0)
    assert (len(train.data), len(test.data)) == (40, 10) and "80% train / 20% test" in note
    assert train.data.image_size == (16, 16) and train.native_shape == (12, 12)  # resized to the views' size
    again = labelled_splits(ImageKind(), spec, str(path), seed=0)[1]
    assert torch.equal(test.data.rows, again.data.rows)
    np.savez(tmp_path / "unlabelled.npz", images=rng.integers(0, 255, (50, 12, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match="no labels"):
        labelled_splits(ImageKind(), spec, str(tmp_path / "unlabelled.npz"))
