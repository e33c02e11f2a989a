"""The fast probes: L-BFGS against scikit-learn, SGD unchanged, probe_suite against separate calls."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from vicreg.probes import balanced_subset, linear_probe, probe_suite, standardize
from vicreg.probes.linear import objective, softmax_regression_grad, whitening


def _problem(n: int, seed: int, dim: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels by a fixed linear rule with a margin, on correlated features (so whitening matters)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    mix = torch.eye(dim) + 0.5 * torch.randn(dim, dim, generator=torch.Generator().manual_seed(98))
    x = torch.randn(4 * n, dim, generator=g)
    top2 = (x @ w.T).topk(2, dim=1).values
    x = x[top2[:, 0] - top2[:, 1] > 0.5][:n]
    return x @ mix + 3.0, (x @ w.T).argmax(1)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn")
def test_lbfgs_probe_matches_sklearn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    (x, y), (xt, yt) = _problem(600, 0), _problem(300, 1)
    wd = 1e-2
    res = linear_probe(x, y, xt, yt, solver="lbfgs", epochs=200, weight_decay=wd)
    xs, xts = standardize(x, xt)
    # sklearn minimises C * sum(CE) + ||W||^2 / 2 = (N C) * (mean CE + ||W||^2 / (2 N C)): C = 1 / (N wd)
    clf = LogisticRegression(C=1.0 / (x.shape[0] * wd), tol=1e-10, max_iter=5000).fit(xs.numpy(), y.numpy())
    theirs = torch.from_numpy(clf.coef_).float(), torch.from_numpy(clf.intercept_).float()
    their_loss = float(objective(xs, y, *theirs, wd))
    their_test = 100.0 * float((clf.predict(xts.numpy()) == yt.numpy()).mean())
    assert res.loss <= their_loss + 1e-5
    assert abs(res.last_top1 - their_test) <= 1.0
    assert abs(res.train_top1 - 100.0 * float((clf.predict(xs.numpy()) == y.numpy()).mean())) <= 1.0


def test_lbfgs_reaches_a_lower_objective_than_sgd_and_is_deterministic() -> None:
    (x, y), (xt, yt) = _problem(500, 2), _problem(200, 3)
    fast = linear_probe(x, y, xt, yt, solver="lbfgs", epochs=50)
    slow = linear_probe(x, y, xt, yt, solver="sgd", epochs=50, lr=0.5, batch_size=128)
    assert fast.loss <= slow.loss + 1e-6
    assert abs(fast.last_top1 - slow.last_top1) <= 2.0
    again = linear_probe(x, y, xt, yt, solver="lbfgs", epochs=50, seed=7)  # no randomness in L-BFGS
    assert again.curve == fast.curve and again.loss == fast.loss
    assert 1 <= len(fast.curve) <= 50 and fast.best_top1 == max(fast.curve)


def test_sgd_probe_is_the_earlier_minibatch_sgd() -> None:
    """The SGD path, rewritten to gather once per epoch, takes the same steps as the per-batch loop."""
    (x, y), (xt, yt) = _problem(300, 4), _problem(100, 5)
    epochs, lr, wd, momentum, batch = 3, 0.3, 1e-3, 0.9, 64
    res = linear_probe(x, y, xt, yt, solver="sgd", epochs=epochs, lr=lr, weight_decay=wd, batch_size=batch, seed=3)
    xs, xts = standardize(x, xt)
    w, b = torch.zeros(3, 12), torch.zeros(3)
    bw, bb = torch.zeros_like(w), torch.zeros_like(b)
    g, step, total, curve = torch.Generator().manual_seed(3), 0, epochs * math.ceil(300 / batch), []
    for _ in range(epochs):
        for idx in torch.randperm(300, generator=g).split(batch):
            gw, gb = softmax_regression_grad(xs[idx], y[idx], w, b)
            bw.mul_(momentum).add_(gw + wd * w)
            bb.mul_(momentum).add_(gb)
            rate = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            w, b, step = w - rate * bw, b - rate * bb, step + 1
        curve.append(100.0 * float(((xts @ w.T + b).argmax(1) == yt).float().mean()))
    assert res.curve == pytest.approx(curve, abs=1e-4)
    assert res.loss == pytest.approx(float(objective(xs, y, w, b, wd)), rel=1e-4)


def test_whitening_whitens_and_the_objective_is_unchanged() -> None:
    x, _ = _problem(400, 6)
    xs = standardize(x)[0]
    p = whitening(xs, shrink=0.0)
    cov = (xs @ p).T @ (xs @ p) / xs.shape[0]
    torch.testing.assert_close(cov, torch.eye(12), atol=1e-3, rtol=0)


def test_probe_suite_equals_separate_calls() -> None:
    (x, y), (xt, yt) = _problem(400, 7), _problem(150, 8)
    kw = dict(epochs=8, lr=0.3, batch_size=64, seed=1)
    suite = probe_suite(x, y, xt, yt, fractions=(0.1, 0.5), **kw)
    assert suite["linear"] == linear_probe(x, y, xt, yt, solver="lbfgs", **kw).as_dict()
    for fraction, key in ((0.1, "10%"), (0.5, "50%")):
        idx = balanced_subset(y, fraction, seed=1)
        alone = linear_probe(x[idx], y[idx], xt, yt, solver="sgd", **kw)
        assert suite["semi"][key] == {"labels": int(idx.numel()), **alone.as_dict()}
    sgd = probe_suite(x, y, xt, yt, fractions=(0.1,), solver="sgd", **kw)
    assert sgd["linear"] == linear_probe(x, y, xt, yt, solver="sgd", **kw).as_dict()


def test_standardize_with_uses_the_given_statistics() -> None:
    (x, y), (xt, yt) = _problem(200, 9), _problem(50, 10)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    a = linear_probe(x[:50], y[:50], xt, yt, solver="sgd", epochs=3, standardize_with=x)
    b = linear_probe(
        (x[:50] - mean) / std, y[:50], (xt - mean) / std, yt, solver="sgd", epochs=3, standardize_with=(x - mean) / std
    )
    assert a.curve == pytest.approx(b.curve, abs=1e-3)


def test_probe_rejects_bad_input() -> None:
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    with pytest.raises(ValueError, match="solver"):
        probe_suite(x, y, x, y, solver="adam")
    with pytest.raises(ValueError, match="width"):
        probe_suite(x, y, torch.randn(5, 3), y[:5])
    with pytest.raises(ValueError, match="fractions"):
        probe_suite(x, y, x, y, fractions=(0.0,))
    with pytest.raises(ValueError, match="standardize_with"):
        linear_probe(x, y, x, y, standardize_with=torch.randn(5, 3))
    with pytest.raises(ValueError, match=">= 0"):
        probe_suite(x, y - 1, x, y)
