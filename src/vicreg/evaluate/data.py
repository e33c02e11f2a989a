"""Labelled train/test data for evaluation, at the size and channels the encoder was trained on.

Evaluation images are whole images (no random crop). Images whose size differs from the training views'
size are brought to it the way :func:`vicreg.data.load` does with ``size=``: shorter side resized (bilinear,
antialiased), then centre-cropped to a square; square images are simply resized.

Where the test set comes from:

* a dataset name or a dataset folder (CIFAR, STL-10, IDX): its own ``train`` / ``test`` splits;
* ``test_source`` given: that source (e.g. ``imagenet/val`` next to ``imagenet/train``);
* otherwise (a ``.npy``/``.npz`` file or an image folder, which have no splits): a seeded 80/20 split of the
  labelled rows, recorded as such in ``eval.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vicreg.data import ArrayDataset, load
from vicreg.data.sources import has_splits

__all__ = ["EvalData", "has_splits", "load_eval_data", "load_images"]


@dataclass(frozen=True)
class EvalData:
    train: ArrayDataset
    test: ArrayDataset
    split: str
    """How train and test were obtained, in words (goes into eval.json)."""
    native_size: tuple[int, int] | None
    """The training images' size before resizing (``None`` for image folders, decoded at the target size)."""


def load_images(
    source: str | os.PathLike[str], split: str, *, size: int, channels: int, download: bool = False
) -> tuple[ArrayDataset, tuple[int, int] | None]:
    """One split with labels, at ``size x size`` and ``channels``; also the native size (``None``: folder)."""
    path = Path(os.fspath(source)).expanduser()
    is_folder = path.is_dir() and not has_splits(source)
    if is_folder:
        data, native = load(source, split, size=size, channels=channels, download=download), None
    else:
        data = load(source, split, channels=channels, download=download)
        native = data.image_size
        data = data.resized(size)
    if data.labels is None or int(data.labels.min()) < 0:
        raise ValueError(
            f"{data.name} has no labels (or unlabelled rows) and cannot be used for evaluation; pass a labelled "
            "dataset with --data (an image folder with one sub-folder per class, or a .npz with 'labels')"
        )
    return data, native


def load_eval_data(
    source: str | os.PathLike[str],
    *,
    size: int,
    channels: int,
    test_source: str | os.PathLike[str] | None = None,
    train_split: str = "train",
    test_split: str = "test",
    seed: int = 0,
    test_fraction: float = 0.2,
    download: bool = False,
) -> EvalData:
    """Train and test sets for evaluation (see the module doc for where the test set comes from)."""
    train, native = load_images(source, train_split, size=size, channels=channels, download=download)
    if test_source is not None:
        test, _ = load_images(test_source, test_split, size=size, channels=channels, download=download)
        return EvalData(train, test, f"train: {train.name}; test: {test.name}", native)
    if has_splits(source):
        test, _ = load_images(source, test_split, size=size, channels=channels, download=download)
        return EvalData(train, test, f"the dataset's own splits ({train_split} / {test_split})", native)
    n = len(train)
    n_test = round(test_fraction * n)
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"{train.name}: {n} images are too few for a train/test split; pass --test-data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    whole = train
    train, test = whole.subset(order[n_test:].sort().values), whole.subset(order[:n_test].sort().values)
    note = (
        f"{whole.name} has no test split: seeded random split, {100 * (1 - test_fraction):.0f}% train / "
        f"{100 * test_fraction:.0f}% test (seed {seed}, {n - n_test} / {n_test} images)"
    )
    return EvalData(train, test, note, native)
