"""Labelled train and test splits for evaluation, read through a data kind."""

from __future__ import annotations

import torch

from vicreg.build.kinds import DataKind, Split
from vicreg.data import Dataset
from vicreg.data.bands import BandImages
from vicreg.models import EncoderSpec

__all__ = ["labelled_splits"]


def labelled_splits(
    kind: DataKind,
    spec: EncoderSpec,
    source: str,
    *,
    test_source: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    download: bool = False,
) -> tuple[Split, Split, str]:
    """Labelled train and test splits for evaluation, and how they were obtained in words.

    A source with its own splits uses them; ``test_source`` gives a separate test set; otherwise a seeded
    ``1 - test_fraction`` / ``test_fraction`` split of the labelled rows.
    """
    train = kind.load_split(source, "train", spec, download=download)
    _require_labels(train.data)
    if test_source is not None:
        test = kind.load_split(test_source, "test", spec, download=download)
        _require_labels(test.data)
        return train, test, f"train: {train.data.name}; test: {test.data.name}"
    if kind.has_splits(source):
        test = kind.load_split(source, "test", spec, download=download)
        _require_labels(test.data)
        return train, test, "the dataset's own splits (train / test)"
    whole = train.data
    n = len(whole)
    n_test = round(test_fraction * n)
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"{whole.name}: {n} rows are too few for a train/test split; pass --test-data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep, held = order[n_test:].sort().values, order[:n_test].sort().values
    paths = train.paths
    tr = Split(whole.subset(keep), train.native_shape, None if paths is None else [paths[i] for i in keep.tolist()])
    te = Split(whole.subset(held), train.native_shape, None if paths is None else [paths[i] for i in held.tolist()])
    note = (
        f"{whole.name} has no test split: seeded random split, {100 * (1 - test_fraction):.0f}% train / "
        f"{100 * test_fraction:.0f}% test (seed {seed}, {n - n_test} / {n_test} rows)"
    )
    return tr, te, note


def _require_labels(data: Dataset | BandImages) -> None:
    if data.labels is None or int(data.labels.min()) < 0:
        raise ValueError(
            f"{data.name} has no labels (or unlabelled rows) and cannot be used for evaluation; pass a labelled "
            "dataset with --data (an image folder with one sub-folder per class, or a .npz with labels)"
        )
