"""Batches out: an index-based loader for in-memory datasets and a DataLoader-backed one for image folders.

Both yield ``(images, labels)``: ``images`` is ``uint8 (B, C, H, W)`` (the views are made on the batch, see
:class:`vicreg.ImageViews`), ``labels`` is ``int64 (B,)`` or ``None`` for unlabeled data. Both read the
same per-epoch order, a pure function of ``(seed, epoch)`` given by :func:`shard_indices`:

* ``shuffle``: a permutation seeded by ``(seed, epoch)``; the same on every rank.
* Sharding under ``torch.distributed`` (rank and world size from :func:`vicreg.distributed.get_dist_info`
  unless given): rank ``r`` of ``W`` reads positions ``r, r + W, r + 2W, ...`` of the epoch's order, so the
  ranks' shards are disjoint and of equal size.
* The last partial batch: with ``drop_last=True`` (the default, and required when ``world_size > 1``) the
  epoch holds ``N // (batch_size * world_size)`` batches per rank and the ``N mod (batch_size * world_size)``
  samples left over are not read in that epoch (with shuffling, different samples each epoch). Dropping keeps
  every batch the same size on every rank, which VICReg's all-gather of the global batch needs. With
  ``drop_last=False`` (one process only, e.g. feature extraction) the last batch is smaller.
* Resume: call ``set_epoch(epoch, start_batch)`` before iterating. For a run stopped after ``step`` batches,
  ``epoch, start_batch = divmod(step, len(loader))`` continues exactly where it stopped: the skipped batches
  are not read or decoded.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import traceback
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, Protocol, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from vicreg.augment.pairs import TensorPair
from vicreg.data.arrays import Dataset, FloatDataset, ImageDataset
from vicreg.data.folder import BadImageError, FolderSample, ImageFolderSource
from vicreg.distributed import get_dist_info

__all__ = [
    "BadImageWarning",
    "FolderBatch",
    "FolderLoader",
    "ImageSource",
    "InMemoryLoader",
    "collate_folder",
    "decode_source",
    "folder_loader",
    "ignore_stop_signals",
    "is_worker_exit",
    "load_folder",
    "shard_indices",
]

Batch = tuple[Tensor, Tensor | None]
_SHOWN_PATHS = 5


class BadImageWarning(UserWarning):
    """Unusable image files were skipped (their count and first paths are in the message)."""


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed from ``(seed, epoch)`` (no collisions like ``seed + epoch`` has)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def shard_indices(
    n: int,
    *,
    batch_size: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """The sample indices rank ``rank`` reads in ``epoch``, in order (``int64``, on the CPU).

    Batch ``b`` is ``indices[b * batch_size : (b + 1) * batch_size]``. See the module doc for the rules.
    """
    _check_batching(n, batch_size, drop_last, rank, world_size)
    if shuffle:
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    if not drop_last:
        return order
    per_rank = n // (batch_size * world_size) * batch_size
    return order[: per_rank * world_size].view(per_rank, world_size)[:, rank].contiguous()


def _check_batching(n: int, batch_size: int, drop_last: bool, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if world_size > 1 and not drop_last:
        raise ValueError(
            "drop_last=False is not supported with several processes: VICReg gathers the global batch, "
            "which needs the same batch size on every rank; use drop_last=True"
        )
    if drop_last and n < batch_size * world_size:
        raise ValueError(
            f"the dataset has {n} samples, fewer than one global batch of {batch_size} x {world_size} "
            "processes, so drop_last=True leaves no batch; lower batch_size"
        )


def _num_batches(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    if drop_last:
        return n // (batch_size * world_size)
    return -(-n // batch_size)


class _EpochState:
    """Epoch and resume position shared by both loaders."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int | None,
        world_size: int | None,
    ) -> None:
        info = get_dist_info()
        self.rank = info.rank if rank is None else rank
        self.world_size = info.world_size if world_size is None else world_size
        _check_batching(n, batch_size, drop_last, self.rank, self.world_size)
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seed = (
            n,
            batch_size,
            shuffle,
            drop_last,
            seed,
        )
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return _num_batches(self.n, self.batch_size, self.world_size, self.drop_last)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}] (batches per epoch), got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> Tensor:
        """This epoch's indices for this rank, from ``start_batch`` on."""
        idx = shard_indices(
            self.n,
            batch_size=self.batch_size,
            epoch=self.epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
        )
        return idx[self.start_batch * self.batch_size :]


class InMemoryLoader:
    """Batches of in-memory rows by indexing: one row copy per batch, no per-image Python.

    ``data`` is an :class:`ImageDataset` (uint8 images) or :class:`FloatDataset` (signals, table rows),
    whose labels come along, or a bare tensor / :class:`~vicreg.augment.TensorPair` of row-aligned tensors
    (two-modality pairs) with ``labels`` given separately. Yields ``(x, labels_or_None)`` with ``x`` of the same
    type as the rows. Batches are made on the device the rows live on: ``InMemoryLoader(data.to("cuda"), ...)``
    keeps CIFAR or STL-10 on the GPU and costs no host-to-device copy per step.

    Args:
        data: the rows (and labels).
        batch_size: per process.
        labels: labels of a bare tensor or pair (a dataset brings its own).
        shuffle, drop_last, seed, rank, world_size: see the module doc.
    """

    def __init__(
        self,
        data: Dataset | Tensor | TensorPair,
        batch_size: int,
        *,
        labels: Tensor | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if isinstance(data, ImageDataset | FloatDataset):
            self.dataset: Dataset | None = data
            x: Tensor | TensorPair = data.rows
            labels = data.labels
        else:
            self.dataset, x = None, data
        tensors = tuple(x) if isinstance(x, TensorPair) else (x,)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors) or (labels is not None and labels.shape[0] != n):
            raise ValueError("the rows and labels of an InMemoryLoader must have the same number of rows")
        self.x, self.labels = x, labels
        self._state = _EpochState(n, batch_size, shuffle, drop_last, seed, rank, world_size)

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        return len(self._state)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Read epoch ``epoch``'s order from batch ``start_batch`` on, until the next call."""
        self._state.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[tuple[Any, Tensor | None]]:
        first = self.x.a if isinstance(self.x, TensorPair) else self.x
        idx = self._state.indices().to(first.device)  # once per epoch; the batches slice it
        step = self._state.batch_size
        for start in range(0, idx.shape[0], step):
            sel = idx[start : start + step]
            x = (
                TensorPair(_take(self.x.a, sel), _take(self.x.b, sel))
                if isinstance(self.x, TensorPair)
                else _take(self.x, sel)
            )
            yield x, None if self.labels is None else _take(self.labels, sel)


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of ``x``: numpy's single-threaded row copy on the CPU, ``index_select`` elsewhere.

    A batch copy is memory-bound. torch's CPU ``index_select`` wakes its OpenMP pool for it, which on a loaded
    machine waited ~8 ms per CIFAR batch against ~0.02 ms for ``np.take`` (``benchmarks/data.py``).
    """
    if x.device.type == "cpu":
        return torch.from_numpy(np.take(x.numpy(), idx.numpy(), axis=0))
    return x.index_select(0, idx.to(x.device))


class FolderBatch(NamedTuple):
    """A collated batch from an image folder (what the DataLoader workers send back)."""

    images: Tensor  # uint8 (B, C, H, W)
    labels: Tensor  # int64 (B,), -1 when unlabeled
    used: Tensor  # int64 (B,), the file index each image came from
    bad: tuple[tuple[str, str], ...]  # (path, reason) of the files rejected for this batch


def collate_folder(samples: list[FolderSample]) -> FolderBatch:
    """Stack :class:`FolderSample` s into a :class:`FolderBatch` (runs in the workers)."""
    return FolderBatch(
        torch.stack([s.image for s in samples]),
        torch.tensor([s.label for s in samples], dtype=torch.int64),
        torch.tensor([s.used for s in samples], dtype=torch.int64),
        tuple(b for s in samples for b in s.bad),
    )


class _ShardSampler(Sampler[int]):
    def __init__(self, state: _EpochState) -> None:
        self.state = state

    def __iter__(self) -> Iterator[int]:
        return iter(self.state.indices().tolist())

    def __len__(self) -> int:
        s = self.state
        total = s.n if not s.drop_last else len(s) * s.batch_size
        return max(0, total - s.start_batch * s.batch_size)


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


# ---------------------------------------------------------------------------- workers: stop signals and errors
# Ctrl-C in a terminal, SLURM and systemd signal the whole process group. The main process owns the stop (it
# saves a checkpoint first), so the decoding workers ignore SIGINT and SIGTERM; they are ended by the loader.

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_WORKER_EXIT = re.compile(r"DataLoader worker \(pid.*?\) (exited unexpectedly|is killed by signal)")


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGINT and SIGTERM (the main process owns the stop).

    Workers are started with these signals blocked (:func:`_stop_signals_blocked`), so one sent to the process
    group while a worker starts cannot kill it before this runs; it stays pending and is then discarded here.
    """
    del worker_id
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while worker processes are forked (they inherit the mask); a
    signal arriving meanwhile is delivered to this process when the block ends, none is lost."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def is_worker_exit(err: BaseException) -> bool:
    """Whether ``err`` is torch's "DataLoader worker (pid ...) exited unexpectedly / is killed by signal"."""
    return isinstance(err, RuntimeError) and _WORKER_EXIT.search(str(err)) is not None


class _WorkerError(NamedTuple):
    """An exception raised in a worker, sent back as a value: the main process raises ``error`` itself, so the
    user sees the same one line as with ``num_workers=0`` instead of torch's "Original Traceback" text."""

    error: bytes  # the pickled exception: unpickled only to be raised, so no frame of the loader holds it
    traceback: str


def _portable(err: BaseException) -> bytes:
    """``err`` pickled when it survives the trip (from the worker), else a RuntimeError with its text."""
    try:
        data = pickle.dumps(err)
        pickle.loads(data)
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))
    return data


class _Reporting(TorchDataset[Any]):
    """The source as the workers see it: an exception becomes a :class:`_WorkerError` sample."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> FolderSample | _WorkerError:
        try:
            return self.source[index]
        except Exception as err:
            return _WorkerError(_portable(err), traceback.format_exc())


def _collate_reporting(samples: list[Any]) -> FolderBatch | _WorkerError:
    failed = next((s for s in samples if isinstance(s, _WorkerError)), None)
    return failed if failed is not None else collate_folder(samples)


class ImageSource(Protocol):
    """What :class:`FolderLoader` reads: an :class:`ImageFolderSource`, or a Hugging Face dataset's images
    (:class:`vicreg.data.hf.HFImageSource`). Item ``i`` is a :class:`FolderSample` (a bad image's slot holds the
    next usable one, the bad ones listed in ``bad``); ``labels`` is ``None`` when unlabeled."""

    @property
    def root(self) -> str | os.PathLike[str]: ...
    @property
    def classes(self) -> tuple[str, ...]: ...
    @property
    def labels(self) -> Any: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> FolderSample: ...


def note_bad_images(bad: Iterable[tuple[str, str]], seen: dict[str, str], new: dict[str, str], *, strict: bool) -> None:
    """Record a batch's unusable images ``(path, reason)``: unseen ones go to ``seen`` and ``new``; with
    ``strict`` the first one raises :class:`BadImageError` naming it."""
    for path, reason in bad:
        if strict:
            raise BadImageError(
                f"unusable image file {path}: {reason} (strict=True; remove or fix the file, or pass "
                "strict=False to skip such files with a warning)"
            )
        if path not in seen:
            new[path] = seen[path] = reason


def warn_bad_images(new: Mapping[str, str], root: object, filled: str, *, stacklevel: int) -> None:
    """One :class:`BadImageWarning` for the unusable images met in an epoch (their count and first paths)."""
    if not new:
        return
    shown = "; ".join(f"{p} ({r})" for p, r in list(new.items())[:_SHOWN_PATHS])
    more = f"; and {len(new) - _SHOWN_PATHS} more" if len(new) > _SHOWN_PATHS else ""
    warnings.warn(
        f"skipped {len(new)} unusable image file(s) under {root} (each slot got {filled}): {shown}{more}. "
        "The full list is in loader.bad_files; strict=True makes this an error.",
        BadImageWarning,
        stacklevel=stacklevel + 1,
    )


class FolderLoader:
    """Batches of an :class:`ImageFolderSource`, decoded in DataLoader worker processes.

    Unusable files (see :class:`ImageFolderSource`) never stop an epoch: their slot holds the next readable
    file, and once per epoch in which new ones were met, a :class:`BadImageWarning` gives their count and
    the first paths. :attr:`bad_files` maps every unusable path met so far to its reason. With
    ``strict=True`` the first one raises :class:`BadImageError` naming it.

    Args:
        source: the folder dataset.
        batch_size: per process.
        shuffle, drop_last, seed, rank, world_size: see the module doc.
        num_workers: decoding processes (default ``min(8, cpu_count)``; 0 decodes in this process).
        strict: raise on the first unusable file instead of skipping it.
        pin_memory: page-locked batches for fast copies to the GPU (default: when CUDA is available).
        prefetch_factor: batches each worker prepares ahead.
    """

    def __init__(
        self,
        source: ImageSource,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int | None = None,
        strict: bool = False,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
    ) -> None:
        self.source = source
        self.strict = strict
        self.bad_files: dict[str, str] = {}
        self.stop_requested = False
        self._state = _EpochState(len(source), batch_size, shuffle, drop_last, seed, rank, world_size)
        workers = _default_workers() if num_workers is None else num_workers
        self._loader: DataLoader[Any] = DataLoader(
            _Reporting(source) if workers > 0 else cast(Any, source),  # map-style: what ImageSource promises
            batch_size=batch_size,
            sampler=_ShardSampler(self._state),
            num_workers=workers,
            collate_fn=_collate_reporting if workers > 0 else collate_folder,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            prefetch_factor=prefetch_factor if workers > 0 else None,
            persistent_workers=workers > 0,
            worker_init_fn=ignore_stop_signals if workers > 0 else None,
        )
        # Workers ignore SIGTERM, so multiprocessing's exit handler (terminate, then join) would wait for them
        # forever: end them through torch's own shutdown first (a finalizer runs before that handler).
        weakref.finalize(self, _shut_down, self._loader, os.getpid())

    def request_stop(self) -> None:
        """Say that the main process is stopping (call it from its SIGINT/SIGTERM handler).

        From then on a worker that dies (a ``kill`` aimed at it, the end of a job's grace period) ends the
        iteration quietly instead of raising torch's "DataLoader worker exited unexpectedly": it is part of the
        stop. The caller checks its own stop flag when the iteration ends.
        """
        self.stop_requested = True

    def close(self) -> None:
        """End the worker processes now (the next iteration starts new ones). Also done when the loader is
        garbage-collected and at interpreter exit."""
        _shut_down(self._loader, os.getpid())

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        return len(self._state)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Read epoch ``epoch``'s order from batch ``start_batch`` on, until the next call."""
        self._state.set_epoch(epoch, start_batch)

    def batches(self) -> Iterator[FolderBatch]:
        """The full :class:`FolderBatch` es (file indices and rejected files included), bad files handled."""
        new: dict[str, str] = {}
        try:
            with _stop_signals_blocked():  # the first iteration forks the workers
                batches = iter(self._loader)
            for batch in _until_stopped(batches, self):
                if isinstance(batch, _WorkerError):
                    _raise_worker_error(batch)
                note_bad_images(batch.bad, self.bad_files, new, strict=self.strict)
                yield batch
        finally:
            warn_bad_images(new, self.source.root, "the next readable file", stacklevel=3)

    def __iter__(self) -> Iterator[Batch]:
        labelled = self.source.labels is not None
        for batch in self.batches():
            yield batch.images, batch.labels if labelled else None


def _raise_worker_error(failed: _WorkerError) -> NoReturn:
    """Raise the worker's exception here, with its traceback as a note (shown only with a traceback)."""
    error = pickle.loads(failed.error)
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(f"raised in a DataLoader worker:\n{failed.traceback}")
    try:
        raise error
    finally:  # no frame -> exception -> traceback -> frame cycle: the loader is freed (workers ended) at once
        del error


def _shut_down(loader: DataLoader[Any], owner: int) -> None:
    iterator = getattr(loader, "_iterator", None)  # persistent workers live in the DataLoader's iterator
    if iterator is not None and os.getpid() == owner:  # not in a forked worker, which holds a copy
        loader._iterator = None
        iterator._shutdown_workers()


def _until_stopped(batches: Iterator[Any], loader: FolderLoader) -> Iterator[Any]:
    """``batches``, ended quietly when a worker dies after :meth:`FolderLoader.request_stop`."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as err:
            if loader.stop_requested and is_worker_exit(err):
                return
            raise
        yield batch


def folder_loader(
    root: str | os.PathLike[str],
    size: int,
    batch_size: int,
    *,
    channels: int = 3,
    labeled: bool | None = None,
    min_size: int | None = None,
    **kwargs: Any,
) -> FolderLoader:
    """A :class:`FolderLoader` over the images under ``root``, decoded to ``uint8 (channels, size, size)``.

    ``channels``, ``labeled`` and ``min_size`` go to :class:`ImageFolderSource`; the other keyword
    arguments (``shuffle``, ``drop_last``, ``seed``, ``rank``, ``world_size``, ``num_workers``, ``strict``,
    ``pin_memory``, ``prefetch_factor``) to :class:`FolderLoader`.
    """
    source = ImageFolderSource(root, size, channels=channels, labeled=labeled, min_size=min_size)
    return FolderLoader(source, batch_size, **kwargs)


def load_folder(
    root: str | os.PathLike[str],
    size: int,
    *,
    channels: int = 3,
    labeled: bool | None = None,
    min_size: int | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    batch_size: int = 256,
) -> ImageDataset:
    """Decode every usable image under ``root`` once into an :class:`ImageDataset` (in scan order).

    Unusable files are left out (one :class:`BadImageWarning`, or :class:`BadImageError` when ``strict``).
    """
    source = ImageFolderSource(root, size, channels=channels, labeled=labeled, min_size=min_size)
    return decode_folder(source, strict=strict, num_workers=num_workers, batch_size=batch_size)[0]


def decode_folder(
    source: ImageFolderSource,
    *,
    strict: bool = False,
    num_workers: int | None = None,
    batch_size: int = 256,
) -> tuple[ImageDataset, list[str]]:
    """Decode every usable image of ``source`` once (in scan order); also return the paths that were kept."""
    data, kept = decode_source(
        source, name=str(Path(source.root)), strict=strict, num_workers=num_workers, batch_size=batch_size
    )
    return data, [str(source.files[i]) for i in kept.tolist()]


def decode_source(
    source: ImageSource,
    *,
    name: str | None = None,
    strict: bool = False,
    num_workers: int | None = None,
    batch_size: int = 256,
) -> tuple[ImageDataset, Tensor]:
    """Decode every usable image of ``source`` once, in its order, into an :class:`ImageDataset` named ``name``
    (default: ``source.root``); also return the indices of the kept items (``int64``).

    Unusable images are left out (one :class:`BadImageWarning`, or :class:`BadImageError` when ``strict``).
    """
    loader = FolderLoader(
        source,
        min(batch_size, len(source)),
        shuffle=False,
        drop_last=False,
        rank=0,
        world_size=1,
        num_workers=num_workers,
        strict=strict,
        pin_memory=False,
    )
    images, labels, used = [], [], []
    for batch in loader.batches():
        images.append(batch.images)
        labels.append(batch.labels)
        used.append(batch.used)
    items = torch.cat(used)
    # A bad item's slot holds the next usable item, which also has its own slot: keep each item once.
    first = torch.full((len(source),), items.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, items, torch.arange(items.shape[0]), reduce="amin")
    keep = first[first < items.shape[0]]
    y = torch.cat(labels)[keep] if source.labels is not None else None
    data = ImageDataset(torch.cat(images)[keep], y, source.classes, name=str(source.root) if name is None else name)
    return data, items[keep]
