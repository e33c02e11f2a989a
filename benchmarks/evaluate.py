"""Cost and accuracy of the evaluation protocols on Fashion-MNIST-sized features, next to the usual tools.

* linear probe: ``vicreg.probes.linear_probe`` (minibatch SGD, 100 epochs) against scikit-learn's
  ``LogisticRegression`` (L-BFGS) on the same standardised features: seconds and test top-1;
* kNN: ``knn_evaluate`` for k = 20 and 200 at once against two ``knn_accuracy`` calls (one per k).

Features: Fashion-MNIST's normalised pixels (784-d), and a fixed random projection of them to 256-d followed by
a ReLU (the size of the small CNN's representation). Calls are timed in rotation; medians are reported.

    PYTHONPATH=src python benchmarks/evaluate.py [--repeats 3] [--epochs 100] [--features all|256|784]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from vicreg.data import load
from vicreg.probes import knn_accuracy, knn_evaluate, linear_probe, standardize


def _features() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    train, test = load("fashion-mnist", "train", download=False), load("fashion-mnist", "test", download=False)
    assert train.labels is not None and test.labels is not None
    mean, std = train.mean[0], train.std[0]
    x = (train.images.float() / 255 - mean).div(std).flatten(1)
    xt = (test.images.float() / 255 - mean).div(std).flatten(1)
    proj = torch.randn(784, 256, generator=torch.Generator().manual_seed(0)) / 28
    return {
        "pixels 784-d": (x, train.labels, xt, test.labels),
        "random ReLU 256-d": ((x @ proj).relu(), train.labels, (xt @ proj).relu(), test.labels),
    }


def _sklearn_probe(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> float:
    from sklearn.linear_model import LogisticRegression

    xs, xts = standardize(x, xt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
        clf = LogisticRegression(max_iter=200, C=1.0).fit(xs.numpy(), y.numpy())
    return 100.0 * float((clf.predict(xts.numpy()) == yt.numpy()).mean())


def _rotate(calls: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    times: dict[str, list[float]] = {k: [] for k in calls}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            results[name] = call()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--features", choices=("all", "256", "784"), default="all", help="which feature set(s)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, (x, y, xt, yt) in _features().items():
        if args.features != "all" and not name.endswith(f" {args.features}-d"):
            continue
        probe_times, probe = _rotate(
            {
                "linear_probe": lambda x=x, y=y, xt=xt, yt=yt: linear_probe(x, y, xt, yt, epochs=args.epochs),
                "sklearn": lambda x=x, y=y, xt=xt, yt=yt: _sklearn_probe(x, y, xt, yt),
            },
            args.repeats,
        )
        knn_times, knn = _rotate(
            {
                "knn_evaluate": lambda x=x, y=y, xt=xt, yt=yt: knn_evaluate(x, y, xt, yt, ks=(20, 200)),
                "knn_accuracy x2": lambda x=x, y=y, xt=xt, yt=yt: (
                    knn_accuracy(x, y, xt, yt, k=20),
                    knn_accuracy(x, y, xt, yt, k=200),
                ),
            },
            args.repeats,
        )
        ours, theirs = probe["linear_probe"], probe["sklearn"]
        print(f"\n{name}: {x.shape[0]} train / {xt.shape[0]} test")
        print(
            f"  linear_probe ({args.epochs} epochs): {probe_times['linear_probe']:.2f} s, "
            f"top-1 last {ours.last_top1:.2f} (best {ours.best_top1:.2f})"
        )
        print(f"  sklearn LogisticRegression (lbfgs): {probe_times['sklearn']:.2f} s, top-1 {theirs:.2f}")
        print(f"  time ratio sklearn / linear_probe: {probe_times['sklearn'] / probe_times['linear_probe']:.2f}x")
        print(
            f"  knn_evaluate k=20,200: {knn_times['knn_evaluate']:.2f} s; two knn_accuracy calls: "
            f"{knn_times['knn_accuracy x2']:.2f} s ({knn_times['knn_accuracy x2'] / knn_times['knn_evaluate']:.2f}x); "
            f"top-1 k=20 {knn['knn_evaluate']['k20']['top1']:.2f}, k=200 {knn['knn_evaluate']['k200']['top1']:.2f}"
        )
        same = [knn["knn_accuracy x2"][i]["top1"] for i in range(2)]
        print(f"  (knn_accuracy top-1 k=20 {same[0]:.2f}, k=200 {same[1]:.2f})")


if __name__ == "__main__":
    main()
