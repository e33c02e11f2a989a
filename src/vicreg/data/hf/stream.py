"""A Hugging Face dataset as a stream (``hf-stream:``): read in order with a shuffle buffer, one disjoint part
per rank, images decoded in DataLoader workers, for data that does not fit on the disk.

:func:`hf_stream_loader` opens a local dataset (cut into equal shards) or, with ``download=True``, a Hub name
streamed without writing it to the disk; :class:`HFStreamLoader` batches any ``datasets.IterableDataset``. Bad
images are recorded and warned about with the folder loaders' own functions
(:func:`~vicreg.data.loaders.note_bad_images`, :func:`~vicreg.data.loaders.warn_bad_images`).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from vicreg.data.folder import BadImageError
from vicreg.data.hf.source import (
    HFSource,
    as_source,
    decode_value,
    find_columns,
    guess_channels,
    image_channels,
    import_datasets,
    load_all,
    open_hf_dataset,
    select_split,
    spec_name,
    undecoded,
)
from vicreg.data.loaders import FolderBatch, note_bad_images, warn_bad_images
from vicreg.distributed import get_dist_info, is_distributed

__all__ = ["HFStreamLoader", "HFStreamSource", "hf_stream_loader"]


@dataclass(frozen=True)
class HFStreamSource:
    """What a streaming loader knows of its data (``loader.source``)."""

    root: str
    classes: tuple[str, ...]
    image_column: str
    label_column: str | None
    channels: int
    num_examples: int | None


class _StreamCollate:
    """Decode a list of streamed rows into a :class:`FolderBatch` (runs in the DataLoader workers).

    An image that cannot be decoded takes a copy of another image of the same batch (batches keep their size;
    the row is reported in ``bad``).
    """

    def __init__(self, size: int, channels: int, min_size: int, image_column: str, label_column: str | None, name: str):
        self.size, self.channels, self.min_size = size, channels, min_size
        self.image_column, self.label_column, self.name = image_column, label_column, name

    def __call__(self, rows: list[dict[str, Any]]) -> FolderBatch:
        images: list[Tensor | None] = []
        bad: list[tuple[str, str]] = []
        for row in rows:
            try:
                images.append(decode_value(row[self.image_column], self.size, self.channels, self.min_size))
            except Exception as e:  # PIL raises many types on malformed data; each means "unusable image"
                images.append(None)
                bad.append((f"{self.name}: {_where(row[self.image_column])}", f"{type(e).__name__}: {e}"))
        good = [i for i, x in enumerate(images) if x is not None]
        if not good:
            raise BadImageError(f"no image of a batch of {len(rows)} from {self.name} could be decoded: {bad[0][1]}")
        filled = [x if x is not None else images[good[i % len(good)]] for i, x in enumerate(images)]
        labels = [-1 if self.label_column is None else int(row[self.label_column]) for row in rows]
        return FolderBatch(
            torch.stack(cast(list[Tensor], filled)),
            torch.tensor(labels, dtype=torch.int64),
            torch.full((len(rows),), -1, dtype=torch.int64),
            tuple(bad),
        )


def _where(value: Any) -> str:
    """A streamed image for messages: its path, else a digest of its bytes (the same each epoch)."""
    if isinstance(value, Mapping) and value.get("path"):
        return str(value["path"])
    if isinstance(value, Mapping) and value.get("bytes") is not None:
        return f"a streamed row (bytes sha1 {hashlib.sha1(value['bytes']).hexdigest()[:12]})"
    return "a streamed row"


def _join(parts: list[FolderBatch]) -> FolderBatch:
    return FolderBatch(
        torch.cat([b.images for b in parts]),
        torch.cat([b.labels for b in parts]),
        torch.cat([b.used for b in parts]),
        tuple(x for b in parts for x in b.bad),
    )


def _rows_of(batch: FolderBatch, rows: slice, bad: tuple[tuple[str, str], ...]) -> FolderBatch:
    return FolderBatch(batch.images[rows], batch.labels[rows], batch.used[rows], bad)


def _rebatch(batches: Iterator[FolderBatch], batch_size: int) -> Iterator[FolderBatch]:
    """Full batches only: each DataLoader worker ends its part with a short batch; those are joined here.

    Full batches pass through as they come; short ones wait until they fill a batch; what is left is dropped.
    """
    carry: FolderBatch | None = None
    for batch in batches:
        if batch.images.shape[0] == batch_size:
            yield batch
            continue
        carry = batch if carry is None else _join([carry, batch])
        if carry.images.shape[0] >= batch_size:
            yield _rows_of(carry, slice(None, batch_size), carry.bad)
            rest = _rows_of(carry, slice(batch_size, None), ())
            carry = rest if rest.images.shape[0] else None


def _all_have_batch(has_batch: bool) -> bool:
    """True when every rank has a batch (one MIN all-reduce; on the GPU under NCCL)."""
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(has_batch)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class HFStreamLoader:
    """Batches of an iterable Hugging Face dataset, one disjoint part per rank, decoded in DataLoader workers.

    Per rank: ``datasets.distributed.split_dataset_by_node`` gives each rank its part (whole shards when the
    shard count is a multiple of the world size, else every ``world_size``-th example). Order: with
    ``shuffle``, ``stream.shuffle(seed, buffer_size)`` (shard order, then a buffer of rows) and
    ``stream.set_epoch(epoch)`` (``datasets`` then shuffles with ``seed + epoch``) -- an approximate shuffle,
    unlike the exact permutation of :func:`hf_loader`.

    Equal batch counts on every rank (VICReg's gather waits for all ranks):

    * ``num_examples`` known: every rank yields exactly ``len(loader) = num_examples // (world_size *
      batch_size)`` batches. A rank whose part runs out first (uneven shards) starts its part again and warns
      (``repeated_batches`` counts the batches it reread).
    * ``num_examples`` unknown (``len()`` raises ``TypeError``): under ``torch.distributed`` the ranks agree
      before each batch, by one MIN all-reduce of a "has a batch" flag, and all stop when any rank runs out.

    ``set_epoch(epoch, start_batch)``: mid-epoch resume reads and decodes the first ``start_batch`` batches of
    the epoch again and discards them (a stream cannot seek); the same ``num_workers`` gives the same order.

    Unusable images take the slot of another image of their batch; they are warned about once per epoch as
    :class:`FolderLoader` does (:attr:`bad_files` lists them all), and ``strict=True`` raises on the first.
    """

    def __init__(
        self,
        stream: Any,
        size: int,
        batch_size: int,
        *,
        channels: int = 3,
        num_examples: int | None = None,
        data_column: str | None = None,
        label_column: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int | None = None,
        min_size: int | None = None,
        pin_memory: bool | None = None,
        strict: bool = False,
        name: str = "hf-stream",
    ) -> None:
        datasets = import_datasets()
        from datasets.distributed import split_dataset_by_node

        info = get_dist_info()
        self.rank = info.rank if rank is None else rank
        self.world_size = info.world_size if world_size is None else world_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={self.rank}, world_size={self.world_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.batch_size = batch_size
        self.num_batches = None if num_examples is None else num_examples // (batch_size * self.world_size)
        if self.num_batches == 0:
            raise ValueError(
                f"{name} has {num_examples} rows, fewer than one global batch of {batch_size} x {self.world_size} "
                "processes; lower batch_size"
            )
        image_col, label_col, classes = find_columns(stream.features, data_column, label_column)
        self.source = HFStreamSource(name, classes, image_col, label_col, channels, num_examples)
        stream = undecoded(stream, image_col, label_col)
        if shuffle:
            stream = stream.shuffle(seed=seed, buffer_size=buffer_size)  # same seed on every rank: disjoint shards
        if self.world_size > 1:
            stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        assert isinstance(stream, datasets.IterableDataset)
        self._stream = stream
        self.epoch, self.start_batch = 0, 0
        self.repeated_batches = 0
        self.strict = strict
        self.bad_files: dict[str, str] = {}
        workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        collate = _StreamCollate(size, channels, size if min_size is None else min_size, image_col, label_col, name)
        self._loader = DataLoader(
            stream,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        )

    def __len__(self) -> int:
        """Batches per epoch for this process (``TypeError`` when the stream's length is unknown)."""
        if self.num_batches is None:
            raise TypeError(f"{self.source.root}: the stream's length is unknown; pass num_examples")
        return self.num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Read epoch ``epoch``'s order from batch ``start_batch`` on (earlier batches are read and dropped)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        limit = math.inf if self.num_batches is None else self.num_batches
        if not 0 <= start_batch <= limit:
            raise ValueError(f"start_batch must be in [0, {limit}] (batches per epoch), got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def _part(self) -> Iterator[FolderBatch]:
        self._stream.set_epoch(self.epoch)
        return _rebatch(iter(self._loader), self.batch_size)

    def batches(self) -> Iterator[FolderBatch]:
        """This epoch's full :class:`FolderBatch` es for this rank (``used`` is -1: streams have no row index)."""
        agree = self.num_batches is None and is_distributed()
        part = self._part()
        new_bad: dict[str, str] = {}
        done, restarted = 0, False
        try:
            while self.num_batches is None or done < self.num_batches:
                batch = next(part, None)
                if batch is None and self.num_batches is not None:
                    if done == 0:
                        raise ValueError(f"{self.source.root}: rank {self.rank}'s part of the stream is empty")
                    if not restarted:
                        self._warn_repeat(done)
                    restarted = True
                    part = self._part()
                    batch = next(part, None)
                if agree and not _all_have_batch(batch is not None):
                    break
                if batch is None:
                    break
                self.repeated_batches += int(restarted)
                if done >= self.start_batch:
                    note_bad_images(batch.bad, self.bad_files, new_bad, strict=self.strict)
                    yield batch
                done += 1
        finally:
            warn_bad_images(new_bad, self.source.root, "another image of its batch", stacklevel=3)

    def _warn_repeat(self, done: int) -> None:
        assert self.num_batches is not None
        warnings.warn(
            f"{self.source.root}: rank {self.rank}'s part of the stream holds {done} batches, fewer than the "
            f"{self.num_batches} every rank reads (its shards are smaller); it starts its part again for the "
            f"other {self.num_batches - done}",
            stacklevel=4,
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        labelled = self.source.label_column is not None
        for batch in self.batches():
            yield batch.images, batch.labels if labelled else None


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _hub_stream(
    src: HFSource, split: str | None, channels: int | None, data_column: str | None, label_column: str | None
) -> tuple[Any, int | None, int]:
    """``(stream, num_examples or None, channels)`` of a Hub dataset read over the network.

    ``num_examples`` is the split size in the dataset's card, when it gives one for every part of the split;
    ``channels=None`` is read from the first image.
    """
    stream = select_split(load_all(src, True, streaming=True), src, split)
    splits = stream.info.splits or {}
    parts = (src.split or split or "").split("+")
    known = [splits[p].num_examples for p in parts if p in splits]
    if channels is None:
        image_col = find_columns(stream.features, data_column, label_column)[0]
        channels = image_channels(next(iter(undecoded(stream, image_col, None).take(1)))[image_col])
    return stream, sum(known) if known and len(known) == len(parts) else None, channels


def _local_stream(
    dataset: Any, name: str, batch_size: int, world: int, num_examples: int | None, num_workers: int | None
) -> tuple[Any, int]:
    """``(stream, num_examples)``: the first ``L * batch_size * world`` rows of a local dataset in ``world * k``
    equal contiguous shards (``L`` batches per rank, the rest left out as ``drop_last`` does)."""
    n = len(dataset) if num_examples is None else min(num_examples, len(dataset))
    per_rank = n // (batch_size * world) * batch_size
    if per_rank == 0:
        raise ValueError(
            f"{name} has {n} rows, fewer than one global batch of {batch_size} x {world} processes; lower batch_size"
        )
    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    k = _divisor_at_most(per_rank, max(4 * workers, 1))
    return dataset.select(range(per_rank * world)).to_iterable_dataset(num_shards=world * k), per_rank * world


def hf_stream_loader(
    source: HFSource | str,
    size: int,
    batch_size: int,
    *,
    channels: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    buffer_size: int = 1000,
    num_workers: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    data_column: str | None = None,
    label_column: str | None = None,
    split: str | None = "train",
    download: bool = False,
    num_examples: int | None = None,
    min_size: int | None = None,
    pin_memory: bool | None = None,
    strict: bool = False,
) -> HFStreamLoader:
    """An :class:`HFStreamLoader` over ``source`` (``hf-stream:`` or ``hf:`` spec, or :class:`HFSource`).

    * A local dataset or one in the cache: its first ``L * batch_size * world_size`` rows (``L = len(loader)``,
      the rest left out as ``drop_last`` does) as an iterable dataset in ``world_size * k`` equal contiguous
      shards, so every rank's part holds exactly ``L`` batches.
    * A Hub name with ``download=True``: ``load_dataset(name, split=..., streaming=True)``, nothing written to
      the disk; ``num_examples`` defaults to the split size in the dataset's card, when it gives one.

    ``channels=None``: 1 for grey images (the feature's mode, or the first row's), else 3.
    """
    datasets = import_datasets()
    src = as_source(source)
    world = get_dist_info().world_size if world_size is None else world_size
    name = spec_name(src, split)
    if not src.is_local and download:
        stream, card_examples, channels = _hub_stream(src, split, channels, data_column, label_column)
        num_examples = card_examples if num_examples is None else num_examples
    else:
        dataset = open_hf_dataset(src, split, download=download)
        image_col = find_columns(dataset.features, data_column, label_column)[0]
        channels = guess_channels(dataset, image_col) if channels is None else channels
        stream, num_examples = _local_stream(dataset, name, batch_size, world, num_examples, num_workers)
    assert isinstance(stream, datasets.IterableDataset)
    return HFStreamLoader(
        stream,
        size,
        batch_size,
        channels=channels,
        num_examples=num_examples,
        data_column=data_column,
        label_column=label_column,
        shuffle=shuffle,
        seed=seed,
        buffer_size=buffer_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        min_size=min_size,
        pin_memory=pin_memory,
        strict=strict,
        name=name,
    )
