"""A fast evaluation of one Fashion-MNIST run, shared by `quality.py` (tuning runs) and `ablations.py`.

kNN (k = 20, cosine, temperature-weighted, `vicreg.probes.knn_accuracy`) on the full 60k/10k split, a linear
probe (scikit-learn's multinomial LogisticRegression on standardised features, L-BFGS), and the collapse
diagnostics (`vicreg.diagnostics.collapse_stats`) of the representation and of the embedding (expander output)
on the first 2048 test images. `vicreg eval` (SGD probe, 100 epochs) is the reference protocol; this one takes
about a minute on 2 CPU cores and ranks runs the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vicreg.build import load_encoder
from vicreg.data import load
from vicreg.diagnostics import collapse_stats
from vicreg.probes import extract_features, knn_accuracy

DIAGNOSTIC_IMAGES = 2048


def quick_eval(run: str | os.PathLike[str], linear: bool = True, linear_iters: int = 300) -> dict[str, Any]:
    """kNN and linear top-1 (in %) of the run's encoder plus collapse diagnostics; a JSON-ready dict.

    ``linear=False`` skips the probe (``linear_top1`` is then ``None``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    enc = load_encoder(Path(run))
    train, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    kw: dict[str, Any] = {"mean": enc.mean, "std": enc.std}
    with torch.no_grad():
        f_train = extract_features(enc.model.embed, train.images, **kw)
        f_test = extract_features(enc.model.embed, test.images, **kw)
        z_test = extract_features(enc.model, test.images[:DIAGNOSTIC_IMAGES], **kw)
    knn = knn_accuracy(f_train, train.labels, f_test, test.labels, k=20)["top1"]
    result: dict[str, Any] = {
        "knn_top1": knn,
        "linear_top1": None,
        "representation": collapse_stats(f_test[:DIAGNOSTIC_IMAGES]),
        "embedding": collapse_stats(z_test),
    }
    if not linear:
        return result
    scaler = StandardScaler().fit(f_train.numpy())
    clf = LogisticRegression(max_iter=linear_iters).fit(scaler.transform(f_train.numpy()), train.labels.numpy())
    result["linear_top1"] = 100.0 * float(clf.score(scaler.transform(f_test.numpy()), test.labels.numpy()))
    return result
