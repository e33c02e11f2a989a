"""``vicreg eval``: kNN, linear probe and semi-supervised probes of a trained encoder, with baselines.

One call evaluates three feature sets on the same data with the same protocols:

* ``vicreg``: the trained backbone's representation (``model.embed``), frozen;
* ``random_init``: the same architecture freshly initialised (seed fixed), frozen;
* ``pixels``: the normalised input itself, flattened (pixels for images, the raw values for signals and tables).

Protocols: weighted kNN (cosine similarity, votes ``exp(sim / T)``, InstDisc / DINO) for each ``k``; a linear
probe on standardised features (:func:`vicreg.probes.linear.linear_probe`); and the same linear probe
trained on class-balanced, seeded 1% and 10% subsets of the training labels (the "linear on frozen
features" variant of the semi-supervised protocol, not the paper's fine-tuning). Encoder features are cached
under ``RUN/features/``. The result is written to ``eval.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vicreg.build import (
    LoadedEncoder,
    autocast_dtype,
    labelled_splits,
    load_encoder,
    random_init_model,
    resolve_device,
    run_dir_of,
    use_data_root,
)
from vicreg.config import config_to_dict
from vicreg.files import atomic_write
from vicreg.probes.cache import cached, file_identity, tensor_digest
from vicreg.probes.features import extract_features, raw_features
from vicreg.probes.knn import knn_evaluate
from vicreg.probes.linear import balanced_subset, linear_probe

__all__ = ["EvalSettings", "encoder_features", "evaluate_features", "run_eval"]

#: Feature sets larger than this many floats are not evaluated as raw pixels (ImageNet-sized data).
MAX_PIXEL_ELEMENTS = 400_000_000


@dataclass(frozen=True)
class EvalSettings:
    """Protocol settings; they are written into eval.json with the results."""

    ks: tuple[int, ...] = (20, 200)
    temperature: float = 0.07
    probe_epochs: int = 100
    probe_lr: float = 0.1
    probe_weight_decay: float = 1e-4
    probe_batch_size: int = 1024
    fractions: tuple[float, ...] = (0.01, 0.1)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive neighbour counts, got {self.ks}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.probe_epochs < 1 or self.probe_batch_size < 1 or self.probe_lr <= 0 or self.probe_weight_decay < 0:
            raise ValueError("probe epochs and batch size must be >= 1, lr > 0, weight decay >= 0")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"label fractions must be in (0, 1], got {self.fractions}")


def encoder_features(
    enc: LoadedEncoder,
    rows: Tensor,
    *,
    which: str = "vicreg",
    cache_dir: Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    precision: str = "fp32",
    seed: int = 0,
    labels: Tensor | None = None,
) -> tuple[Tensor, bool]:
    """Frozen features of ``rows`` (images, signals or table rows, as the run's data kind loads them).

    ``which``: ``vicreg`` (representation), ``expander`` (representation
    and expander output side by side, ``(N, feature_dim + embedding_dim)``) or ``random_init``.

    Cached under ``cache_dir`` (``None``: not cached). Returns ``(features, cache_hit)``.
    """
    device = torch.device(device)
    if which == "random_init":
        model = random_init_model(enc, seed).to(device)
    elif which in ("vicreg", "expander"):
        model = enc.model.to(device).eval()
    else:
        raise ValueError(f"which must be vicreg, expander or random_init, got {which!r}")
    key = {
        "which": which,
        "checkpoint": file_identity(enc.checkpoint),
        "model": config_to_dict(enc.config.model),
        "seed": seed if which == "random_init" else None,
        "images": tensor_digest(rows, labels),
        "mean": list(enc.mean),
        "std": list(enc.std),
        "precision": precision,
    }

    def embed(x: Tensor) -> Tensor:
        h = model.embed(x)
        return torch.cat([h, model.expander(h)], dim=1) if which == "expander" else h

    def compute() -> Tensor:
        return extract_features(
            embed,
            rows,
            batch_size=batch_size,
            device=device,
            mean=enc.mean,
            std=enc.std,
            autocast_dtype=autocast_dtype(precision, device),
        )

    return cached(cache_dir, key, compute)


def evaluate_features(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    settings: EvalSettings,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """kNN, linear probe and label-fraction probes of one feature set (accuracies in %), on ``device``
    (default: where the features are; a GPU makes kNN on ImageNet-sized sets practical)."""
    s = settings
    if device is not None:
        train_f, train_y, test_f, test_y = (t.to(device) for t in (train_f, train_y, test_f, test_y))
    probe: dict[str, Any] = {
        "epochs": s.probe_epochs,
        "lr": s.probe_lr,
        "weight_decay": s.probe_weight_decay,
        "batch_size": s.probe_batch_size,
        "seed": s.seed,
    }
    classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    t0 = time.perf_counter()
    out: dict[str, Any] = {"feature_dim": int(train_f.shape[1])}
    out["knn"] = knn_evaluate(train_f, train_y, test_f, test_y, ks=s.ks, temperature=s.temperature)
    t1 = time.perf_counter()
    out["linear"] = linear_probe(train_f, train_y, test_f, test_y, num_classes=classes, **probe).as_dict()
    semi = {}
    for fraction in s.fractions:
        idx = balanced_subset(train_y, fraction, seed=s.seed)
        result = linear_probe(train_f[idx], train_y[idx], test_f, test_y, num_classes=classes, **probe)
        semi[f"{100 * fraction:g}%"] = {"labels": int(idx.numel()), **result.as_dict()}
    out["semi"] = semi
    out["seconds"] = {"knn": round(t1 - t0, 3), "probes": round(time.perf_counter() - t1, 3)}
    return out


def run_eval(
    run_or_checkpoint: str | os.PathLike[str],
    data: str | None = None,
    *,
    test_data: str | None = None,
    out: str | os.PathLike[str] | None = None,
    settings: EvalSettings | None = None,
    baselines: bool = True,
    cache: bool = True,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 512,
    download: bool = False,
    data_column: str = "",
    label_column: str = "",
) -> dict[str, Any]:
    """Evaluate a run folder or checkpoint on ``data`` (default: the run's training data); write eval.json.

    Returns the dict that was written (see the module doc). ``out`` defaults to ``RUN/eval.json``.
    """
    settings = settings or EvalSettings()
    dev = resolve_device(device)
    autocast_dtype(precision, dev)  # reject a bad precision before any work
    t_start = time.perf_counter()
    enc = load_encoder(run_or_checkpoint, dev)
    run_dir = run_dir_of(enc.checkpoint)
    source = data or enc.config.data
    if not data:
        use_data_root(enc.config.data_root)
    kind = enc.kind_for(data, data_column=data_column, label_column=label_column)
    train_split, test_split, split_note = labelled_splits(
        kind, enc.spec, source, test_source=test_data, seed=settings.seed, download=download
    )
    train_set, test_set = train_split.data, test_split.data
    train_y, test_y = train_set.labels, test_set.labels
    assert train_y is not None and test_y is not None  # labelled_splits guarantees labels
    cache_dir = run_dir / "features" if cache else None
    kw: dict[str, Any] = {"cache_dir": cache_dir, "device": dev, "batch_size": batch_size, "precision": precision}

    feature_sets: dict[str, tuple[Tensor, Tensor]] = {}
    hits: dict[str, bool] = {}
    t_feat = time.perf_counter()
    which_list = ["vicreg", "random_init"] if baselines else ["vicreg"]
    for which in which_list:
        f_train, hit_a = encoder_features(enc, train_set.rows, which=which, seed=settings.seed, labels=train_y, **kw)
        f_test, hit_b = encoder_features(enc, test_set.rows, which=which, seed=settings.seed, labels=test_y, **kw)
        feature_sets[which] = (f_train, f_test)
        hits[which] = hit_a and hit_b
    notes: dict[str, str] = {}
    if baselines:
        n_pixels = (len(train_set) + len(test_set)) * train_set.rows[0].numel()
        if n_pixels <= MAX_PIXEL_ELEMENTS:
            feature_sets["pixels"] = (
                raw_features(train_set.rows, enc.mean, enc.std),
                raw_features(test_set.rows, enc.mean, enc.std),
            )
        else:
            notes["pixels"] = f"skipped: {n_pixels:,} pixel values exceed {MAX_PIXEL_ELEMENTS:,}"
    feature_seconds = time.perf_counter() - t_feat

    results = {}
    for name, (f_train, f_test) in feature_sets.items():
        results[name] = evaluate_features(f_train, train_y.cpu(), f_test, test_y.cpu(), settings, device=dev)
        if name in hits:
            results[name]["cached_features"] = hits[name]

    report: dict[str, Any] = {
        "checkpoint": str(enc.checkpoint),
        "step": enc.step,
        "backbone": enc.config.model.backbone,
        "data": {
            "source": str(source),
            "kind": enc.spec.kind,
            "train": train_set.name,
            "test": test_set.name,
            "n_train": len(train_set),
            "n_test": len(test_set),
            "num_classes": int(max(int(train_y.max()), int(test_y.max()))) + 1,
            "classes": list(train_set.classes),
            "split": split_note,
            "native_size": list(native[-2:]) if (native := train_split.native_shape) else None,
            "eval_size": enc.image_size or None,
            "input_shape": list(train_set.rows.shape[1:]),
            "resize": (
                "none"
                if not enc.image_size or native == (enc.image_size, enc.image_size)
                else "shorter side to eval_size (bilinear, antialiased), centre crop; whole images, no random crop"
            ),
            "normalize": {"mean": list(enc.mean), "std": list(enc.std)},
        },
        "protocol": {
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
            "features": "backbone output (model.embed) in eval mode, frozen",
            "knn": "cosine similarity of L2-normalised features; the k nearest vote exp(sim / temperature) "
            "(InstDisc / DINO); accuracies in %",
            "linear": "multinomial logistic regression on standardised features (train statistics), SGD momentum "
            "0.9, cosine schedule; 'last_top1' after the final epoch is the honest number, 'best_top1' is the "
            "best epoch on the test set and peeks at it",
            "semi": "the same linear probe trained on class-balanced seeded label fractions of the training set "
            "(linear on frozen features, not fine-tuning); tested on the whole test set",
            "baselines": "random_init: same architecture, seed-fixed fresh weights; pixels: the normalised input "
            "(pixels, series or table rows), flattened",
        },
        "results": results,
        "notes": notes,
        "device": str(dev),
        "precision": precision,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "seconds": {"features": round(feature_seconds, 3), "total": round(time.perf_counter() - t_start, 3)},
    }
    target = Path(out) if out is not None else run_dir / "eval.json"
    text = json.dumps(report, indent=2, allow_nan=False)
    atomic_write(target, lambda f: f.write(text.encode()))
    report["path"] = str(target)
    return report
