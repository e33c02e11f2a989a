"""A Hugging Face dataset read by index, as an image folder is: :func:`hf_loader` for training and
:func:`load_hf_images` for ``vicreg eval`` / ``embed``.

:class:`HFImageSource` is a map-style torch ``Dataset`` of :class:`~vicreg.data.FolderSample` s, so
:class:`~vicreg.data.FolderLoader` batches it (epoch order, per-rank shards, exact mid-epoch resume, bad-image
warnings) and :func:`~vicreg.data.loaders.decode_source` decodes it whole: the loop is the folders' own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vicreg.data.arrays import ImageDataset
from vicreg.data.folder import BadImageError, FolderSample
from vicreg.data.hf.source import (
    HFSource,
    as_source,
    decode_value,
    find_columns,
    guess_channels,
    open_hf_dataset,
    spec_name,
    undecoded,
)
from vicreg.data.loaders import FolderLoader, decode_source

__all__ = ["HFImageSource", "hf_loader", "load_hf_images"]


class HFImageSource(Dataset[FolderSample]):
    """A ``datasets.Dataset`` as a map-style torch ``Dataset`` of fixed-size ``uint8`` images.

    It has what :class:`FolderLoader` reads from a source (``len``, items that are :class:`FolderSample`,
    ``labels``, ``classes``, ``root``), and the same bad-image rule: an image that cannot be decoded (or is
    smaller than ``min_size``) is replaced by the next decodable row and reported in ``FolderSample.bad``
    as ``("<name>[<row>]", reason)``.

    Args:
        dataset: the ``datasets.Dataset`` (one split).
        size: every image becomes ``(channels, size, size)`` (see :func:`vicreg.data.decode_image`).
        channels: 3 (RGB) or 1 (grey); ``None`` takes 1 for grey images (feature mode, else the first image).
        data_column, label_column: override :func:`find_columns`.
        min_size: images whose shorter side is below this are bad. ``None`` means ``size`` (never upscale, as
            for folders); ``0`` keeps every image.
        name: for messages (the spec).
    """

    def __init__(
        self,
        dataset: Any,
        size: int,
        *,
        channels: int | None = None,
        data_column: str | None = None,
        label_column: str | None = None,
        min_size: int | None = None,
        name: str = "hf",
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if len(dataset) == 0:
            raise ValueError(f"{name}: the dataset has no rows")
        self.image_column, self.label_column, self.classes = find_columns(dataset.features, data_column, label_column)
        self.root = name
        self.size = size
        self.channels = guess_channels(dataset, self.image_column) if channels is None else channels
        self.min_size = size if min_size is None else min_size
        self.dataset = undecoded(dataset, self.image_column, self.label_column)
        self.labels: Tensor | None = None
        if self.label_column is not None:
            column = self.dataset.select_columns([self.label_column]).with_format("numpy")[:][self.label_column]
            self.labels = torch.from_numpy(np.asarray(column, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.dataset)

    def decode(self, value: Any) -> Tensor:
        """One undecoded image value -> ``uint8 (channels, size, size)`` (raises on an unusable image)."""
        return decode_value(value, self.size, self.channels, self.min_size)

    def __getitem__(self, index: int) -> FolderSample:
        n = len(self)
        bad: list[tuple[str, str]] = []
        for i in (index + k for k in range(n)):
            i %= n
            try:
                image = self.decode(self.dataset[i][self.image_column])
            except Exception as e:  # PIL raises many types on malformed data; each means "unusable image"
                bad.append((f"{self.root}[{i}]", f"{type(e).__name__}: {e}"))
                continue
            label = -1 if self.labels is None else int(self.labels[i])
            return FolderSample(image, label, i, tuple(bad))
        raise BadImageError(f"none of the {n} images of {self.root} could be decoded (first: {bad[0][0]}: {bad[0][1]})")


def _image_source(
    source: HFSource | str,
    size: int,
    *,
    split: str | None,
    channels: int | None,
    data_column: str | None,
    label_column: str | None,
    min_size: int | None,
    download: bool,
) -> HFImageSource:
    src = as_source(source)
    dataset = open_hf_dataset(src, split, download=download)
    return HFImageSource(
        dataset,
        size,
        channels=channels,
        data_column=data_column,
        label_column=label_column,
        min_size=min_size,
        name=spec_name(src, split),
    )


def hf_loader(
    source: HFSource | str,
    size: int,
    batch_size: int,
    *,
    channels: int | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    data_column: str | None = None,
    label_column: str | None = None,
    split: str | None = "train",
    download: bool = False,
    min_size: int | None = None,
    strict: bool = False,
    pin_memory: bool | None = None,
) -> FolderLoader:
    """A :class:`FolderLoader` over a Hugging Face dataset: the folder protocol, images decoded in the workers.

    ``set_epoch(epoch, start_batch)``, ``len()`` (batches per epoch), per-rank disjoint equal shards of a
    ``(seed, epoch)`` permutation, exact mid-epoch resume, and ``loader.source.classes`` are those of
    :class:`FolderLoader` (see :mod:`vicreg.data.loaders`); ``loader.source`` is the :class:`HFImageSource`.
    """
    image_source = _image_source(
        source,
        size,
        split=split,
        channels=channels,
        data_column=data_column,
        label_column=label_column,
        min_size=min_size,
        download=download,
    )
    return FolderLoader(
        image_source,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        strict=strict,
        pin_memory=pin_memory,
    )


def load_hf_images(
    source: HFSource | str,
    split: str | None,
    *,
    size: int,
    channels: int | None = None,
    data_column: str | None = None,
    label_column: str | None = None,
    download: bool = False,
    min_size: int | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    batch_size: int = 256,
) -> ImageDataset:
    """Decode every usable image of one split into an :class:`ImageDataset` (row order), for eval / embed.

    Unusable images are left out (one :class:`BadImageWarning`, or :class:`BadImageError` when ``strict``).
    """
    image_source = _image_source(
        source,
        size,
        split=split,
        channels=channels,
        data_column=data_column,
        label_column=label_column,
        min_size=min_size,
        download=download,
    )
    return decode_source(image_source, strict=strict, num_workers=num_workers, batch_size=batch_size)[0]
