"""Labelled train and test splits for evaluation, read through a data kind."""

from __future__ import annotations

import torch

from vicreg.build.kinds import DataKind, Split
from vicreg.data import Dataset
from vicreg.data.bands import BandImages
from vicreg.models import EncoderSpec

__all__ = ["NoLabelsError", "held_out_rows", "labelled_splits"]


class NoLabelsError(ValueError):
    """The data has no labels (or unlabelled rows): the labelled protocols cannot run; the label-free ones can."""


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


def held_out_rows(
    kind: DataKind,
    spec: EncoderSpec,
    source: str,
    *,
    rows: int,
    seed: int = 0,
    test_fraction: float = 0.2,
    download: bool = False,
) -> tuple[Split, str]:
    """A fixed, seeded sample of at most ``rows`` held-out rows of ``source``, labelled or not, and where they
    come from in words: its test split when it has one, else the seeded ``test_fraction`` that
    :func:`labelled_splits` holds out with the same ``seed`` (all rows when that is fewer than 2)."""
    if rows < 2:
        raise ValueError(f"the label-free sample needs at least 2 rows, got {rows}")
    own_split = kind.has_splits(source)
    described: list[str] = []

    def pick(n: int) -> torch.Tensor:
        pool = torch.arange(n)
        if not own_split:
            n_test = round(test_fraction * n)
            if n_test >= 2:
                pool = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_test].sort().values
        chosen = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:rows]]
        where = "its test split" if own_split else f"the seeded {100 * test_fraction:g}% held out of its rows"
        if len(pool) == n and not own_split:
            where = "all its rows (too few to hold some out)"
        described.append(f"{len(chosen)} of {len(pool)} rows of {where} (seed {seed})")
        return chosen.sort().values

    split = kind.sample_split(source, "test" if own_split else "train", spec, pick, download=download)
    if len(split.data) < 2:
        raise ValueError(f"{source}: fewer than 2 readable held-out rows for the label-free measures")
    return split, described[0]


def _require_labels(data: Dataset | BandImages) -> None:
    if data.labels is None or int(data.labels.min()) < 0:
        raise NoLabelsError(
            f"{data.name} has no labels (or unlabelled rows) and cannot be used for evaluation; pass a labelled "
            "dataset with --data (an image folder with one sub-folder per class, or a .npz with labels)"
        )
