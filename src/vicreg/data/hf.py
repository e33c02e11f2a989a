"""Hugging Face datasets as an image source: ``hf:<path-or-name>[:<split>]`` and ``hf-stream:...``.

* ``hf:`` a dataset saved with ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), another local folder
  ``datasets.load_dataset`` reads (e.g. a clone of a Hub repository), or a Hub name already in the local Hugging
  Face cache. Nothing is fetched unless ``download=True`` (then ``load_dataset`` may fetch the whole dataset).
  :func:`hf_loader` decodes the images in DataLoader workers and batches them with :class:`FolderLoader`, so the
  epoch order, the per-rank shards and the exact mid-epoch resume are those of image folders.
  :func:`load_hf_arrays` decodes a split into memory for ``vicreg eval`` / ``embed``.
* ``hf-stream:`` the same sources as an iterable dataset, read in order with a shuffle buffer, for data that
  does not fit on the disk (:func:`hf_stream_loader`; a Hub name with ``download=True`` streams from the Hub).

The image column is the one whose feature is ``datasets.Image``, the label column the ``ClassLabel`` one
(:func:`find_columns`; both can be named instead). Images become ``uint8 (C, size, size)`` exactly as folder
images do (:func:`vicreg.data.decode_image`: shorter side resized to ``size``, centre crop, RGB or grey).
``datasets`` is an optional dependency: ``pip install 'vicreg[hf]'``.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image as PILImage
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vicreg.data.arrays import ArrayDataset
from vicreg.data.folder import BadImageError, FolderSample, ImageFolderSource, decode_image
from vicreg.data.loaders import BadImageWarning, FolderBatch, FolderLoader
from vicreg.distributed import get_dist_info, is_distributed

__all__ = [
    "HFImageSource",
    "HFSource",
    "HFStreamLoader",
    "find_columns",
    "hf_loader",
    "hf_splits",
    "hf_stream_loader",
    "is_hf_source",
    "load_hf_arrays",
    "open_hf_dataset",
    "parse_hf_source",
]

HF_PREFIX = "hf:"
HF_STREAM_PREFIX = "hf-stream:"
INSTALL_HINT = "pip install 'vicreg[hf]'"

# Split names (``train``, ``validation``, ``train+test``): what may follow the last ``:`` of a spec.
_SPLIT = re.compile(r"[A-Za-z0-9_.\-]+(\+[A-Za-z0-9_.\-]+)*")
# PIL modes that hold one channel: such images are read as grey when ``channels`` is not given.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_PREFERRED_IMAGE = ("image", "img")
_PREFERRED_LABEL = ("label", "labels")


@dataclass(frozen=True)
class HFSource:
    """A parsed ``hf:`` / ``hf-stream:`` spec.

    Attributes:
        name: a local path (as written) or a Hub dataset name (``owner/name``).
        split: the split named in the spec (``None``: the caller's split applies).
        streaming: ``hf-stream:`` (an iterable dataset read in order) rather than ``hf:``.
    """

    name: str
    split: str | None = None
    streaming: bool = False

    @property
    def path(self) -> Path:
        return Path(self.name).expanduser()

    @property
    def is_local(self) -> bool:
        """A local folder (else a Hub name)."""
        return self.path.exists()

    def __str__(self) -> str:
        prefix = HF_STREAM_PREFIX if self.streaming else HF_PREFIX
        return f"{prefix}{self.name}" + (f":{self.split}" if self.split else "")


def is_hf_source(spec: str | os.PathLike[str]) -> bool:
    """True for ``hf:...`` and ``hf-stream:...`` specs."""
    return isinstance(spec, str) and spec.startswith((HF_PREFIX, HF_STREAM_PREFIX))


def parse_hf_source(spec: str) -> HFSource:
    """Parse ``hf:<path-or-name>[:<split>]`` or ``hf-stream:<path-or-name>[:<split>]``.

    The text after the last ``:`` is a split when it looks like one (letters, digits, ``_.-``, ``+`` between
    names) and the whole rest is not an existing path; so ``hf:C:/data/set`` and paths holding ``:`` work.
    """
    if not is_hf_source(spec):
        raise ValueError(f"{spec!r} is not a Hugging Face source; write hf:<path-or-name>[:<split>]")
    streaming = spec.startswith(HF_STREAM_PREFIX)
    rest = spec[len(HF_STREAM_PREFIX if streaming else HF_PREFIX) :]
    split: str | None = None
    head, sep, tail = rest.rpartition(":")
    if sep and head and _SPLIT.fullmatch(tail) and not Path(rest).expanduser().exists():
        rest, split = head, tail
    if not rest:
        raise ValueError(f"{spec!r} names no dataset; write hf:<path-or-name>[:<split>], e.g. hf:./my_set:train")
    return HFSource(rest, split, streaming)


def _as_source(source: HFSource | str) -> HFSource:
    return source if isinstance(source, HFSource) else parse_hf_source(source)


def _datasets() -> Any:
    """The ``datasets`` module, or an ImportError naming the extra to install."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"Hugging Face datasets (hf: sources) need the 'datasets' package: {INSTALL_HINT}") from e
    return datasets


@contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """No network for ``datasets`` / ``huggingface_hub`` inside (both read their offline flags at import)."""
    if not enabled:
        yield
        return
    datasets = _datasets()
    import huggingface_hub.constants as hub_constants

    targets = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")]
    targets.append((hub_constants, "HF_HUB_OFFLINE"))
    saved_attrs = [(obj, name, getattr(obj, name)) for obj, name in targets if hasattr(obj, name)]
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    verbosity = datasets.logging.get_verbosity()
    try:
        for obj, name, _ in saved_attrs:
            setattr(obj, name, True)
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        datasets.logging.set_verbosity_error()  # "Using the latest cached version ..." is expected here
        yield
    finally:
        for obj, name, value in saved_attrs:
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        datasets.logging.set_verbosity(verbosity)


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_all(source: HFSource, download: bool, streaming: bool = False) -> Any:
    """``Dataset``, ``DatasetDict``, or (Hub + ``streaming``) ``IterableDatasetDict`` for ``source``."""
    datasets = _datasets()
    path = source.path
    if source.is_local:
        if _is_saved_to_disk(path):
            return datasets.load_from_disk(str(path))
        if not path.is_dir():
            raise ValueError(f"{source}: {path} is a file; point to the folder written by save_to_disk")
    try:
        with _offline(not download):
            name = str(path) if source.is_local else source.name
            return datasets.load_dataset(name, streaming=streaming and download)
    except (ConnectionError, FileNotFoundError) as e:
        if source.is_local:
            raise FileNotFoundError(f"{source}: {path} holds no dataset datasets can read ({e})") from e
        if download:
            raise FileNotFoundError(f"{source}: could not fetch {source.name!r} from the Hugging Face Hub ({e})") from e
        raise FileNotFoundError(
            f"{source}: {source.name!r} is not a local folder and not in the local Hugging Face cache; "
            "check the path, or pass --download to fetch it from the Hub"
        ) from e
    except Exception as e:  # datasets raises many types for unreadable data; one line names the source
        if type(e).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
            raise FileNotFoundError(f"{source}: no dataset found ({e}); check the path or name") from e
        raise


def _split_names(data: Any) -> tuple[str, ...]:
    return tuple(data.keys()) if isinstance(data, Mapping) else ()


def hf_splits(source: HFSource | str, *, download: bool = False) -> tuple[str, ...]:
    """The split names of ``source`` (empty for a single saved ``Dataset``, which serves any split)."""
    return _split_names(_load_all(_as_source(source), download))


def _select_split(data: Any, source: HFSource, split: str | None) -> Any:
    """One split of a loaded dataset: the spec's split, else ``split``; ``a+b`` concatenates."""
    datasets = _datasets()
    wanted = source.split or split
    if not isinstance(data, Mapping):  # one Dataset: it is every split the caller asks for, unless the spec names one
        own = None if getattr(data, "split", None) is None else str(data.split)
        if source.split and own is not None and source.split != own:
            raise ValueError(f"{source}: the saved dataset is the {own!r} split, not {source.split!r}")
        return data
    names = tuple(data.keys())
    if wanted is None:
        if len(names) == 1:
            return data[names[0]]
        raise ValueError(f"{source}: name a split, one of {', '.join(names)} (e.g. {source}:{names[0]})")
    parts = wanted.split("+")
    missing = [p for p in parts if p not in data]
    if missing:
        raise ValueError(
            f"{source}: no split {missing[0]!r}; the splits are {', '.join(names)} (write {HF_PREFIX}<name>:<split>)"
        )
    if len(parts) == 1:
        return data[parts[0]]
    if isinstance(data[parts[0]], datasets.IterableDataset):
        return datasets.interleave_datasets([data[p] for p in parts], stopping_strategy="all_exhausted")
    return datasets.concatenate_datasets([data[p] for p in parts])


def open_hf_dataset(source: HFSource | str, split: str | None = None, *, download: bool = False) -> Any:
    """The ``datasets.Dataset`` of ``source`` (a spec or :class:`HFSource`) for ``split``.

    The split named in the spec wins over ``split`` (the caller's "train" / "test"); a ``DatasetDict`` with a
    single split needs neither. A single saved ``Dataset`` is returned for any ``split``.

    Raises:
        ImportError: ``datasets`` is not installed (the message names ``vicreg[hf]``).
        FileNotFoundError: no such folder, and the name is not in the local cache (without ``download``).
        ValueError: the split does not exist (the message lists the splits).
    """
    src = _as_source(source)
    return _select_split(_load_all(src, download), src, split)


def _describe(features: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())


def find_columns(
    features: Mapping[str, Any], data_column: str | None = None, label_column: str | None = None
) -> tuple[str, str | None, tuple[str, ...]]:
    """``(image column, label column or None, class names)`` from a dataset's ``features``.

    Without overrides the image column is the ``datasets.Image`` feature (``image`` / ``img`` when several) and
    the label column the ``ClassLabel`` feature (``label`` / ``labels`` when several, else the first one,
    with a warning); no ``ClassLabel`` means unlabeled. ``label_column`` may also name an integer column
    (class names are then empty).

    Raises:
        ValueError: a named column does not exist or has the wrong type, or no (or an ambiguous) image column;
            the message lists the columns and their types.
    """
    datasets = _datasets()
    if not features:
        raise ValueError("the dataset declares no features, so its image column cannot be found")
    images = [k for k, v in features.items() if isinstance(v, datasets.Image)]
    if data_column is not None:
        if data_column not in features:
            raise ValueError(f"no column {data_column!r} (--data-column); the columns are {_describe(features)}")
        if not isinstance(features[data_column], datasets.Image):
            raise ValueError(
                f"column {data_column!r} is {type(features[data_column]).__name__}, not an Image feature; "
                f"the columns are {_describe(features)}"
            )
        image = data_column
    elif len(images) == 1:
        image = images[0]
    else:
        preferred = [k for k in _PREFERRED_IMAGE if k in images]
        if not preferred:
            what = f"several image columns ({', '.join(images)})" if images else "no Image column"
            raise ValueError(f"{what}; name one with --data-column (the columns are {_describe(features)})")
        image = preferred[0]

    labels = [k for k, v in features.items() if isinstance(v, datasets.ClassLabel)]
    if label_column is not None:
        if label_column not in features:
            raise ValueError(f"no column {label_column!r} (--label-column); the columns are {_describe(features)}")
        feature = features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            return image, label_column, tuple(feature.names)
        if isinstance(feature, datasets.Value) and re.fullmatch(r"u?int(8|16|32|64)", str(feature.dtype)):
            return image, label_column, ()
        fix = (
            f"; turn it into a ClassLabel with dataset.class_encode_column({label_column!r}) and save_to_disk"
            if isinstance(feature, datasets.Value) and str(feature.dtype) in ("string", "large_string")
            else ""
        )
        raise ValueError(
            f"label column {label_column!r} is {feature!r}, not a ClassLabel or integer column{fix} "
            f"(the columns are {_describe(features)})"
        )
    if not labels:
        return image, None, ()
    preferred = [k for k in _PREFERRED_LABEL if k in labels]
    label = preferred[0] if preferred else labels[0]
    if len(labels) > 1 and not preferred:
        warnings.warn(
            f"several ClassLabel columns ({', '.join(labels)}); using {label!r} (choose with --label-column)",
            stacklevel=2,
        )
    return image, label, tuple(features[label].names)


def _image_file(value: Any) -> Any:
    """What ``PIL.Image.open`` reads for one undecoded ``datasets.Image`` value (bytes, else its path)."""
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return io.BytesIO(value["bytes"])
        if value.get("path"):
            return value["path"]
    raise ValueError(f"not an encoded image ({type(value).__name__})")


def _guess_channels(dataset: Any, image_column: str) -> int:
    """1 when the feature's mode (else the first image's) is a grey mode, else 3."""
    mode = getattr(dataset.features[image_column], "mode", None)
    if mode is None:
        first = _undecoded(dataset.select(range(1)), image_column, None)[0][image_column]
        with PILImage.open(_image_file(first)) as img:
            mode = img.mode
    return 1 if mode in _GREY_MODES else 3


def _undecoded(dataset: Any, image_column: str, label_column: str | None) -> Any:
    """Only the two columns, images as raw ``{"bytes", "path"}`` (decoded by us, in the workers)."""
    datasets = _datasets()
    keep = [image_column] + ([label_column] if label_column else [])
    return dataset.select_columns(keep).cast_column(image_column, datasets.Image(decode=False))


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
        self.channels = _guess_channels(dataset, self.image_column) if channels is None else channels
        self.min_size = size if min_size is None else min_size
        self.dataset = _undecoded(dataset, self.image_column, self.label_column)
        self.labels: Tensor | None = None
        if self.label_column is not None:
            column = self.dataset.select_columns([self.label_column]).with_format("numpy")[:][self.label_column]
            self.labels = torch.from_numpy(np.asarray(column, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.dataset)

    def decode(self, value: Any) -> Tensor:
        """One undecoded image value -> ``uint8 (channels, size, size)`` (raises on an unusable image)."""
        # PIL.Image.open reads file objects too; decode_image is annotated for paths only.
        return decode_image(_image_file(value), self.size, channels=self.channels, min_size=self.min_size)

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
    src = _as_source(source)
    dataset = open_hf_dataset(src, split, download=download)
    name = str(src) if src.split or not split else f"{src}:{split}"
    return HFImageSource(
        dataset,
        size,
        channels=channels,
        data_column=data_column,
        label_column=label_column,
        min_size=min_size,
        name=name,
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
        cast(ImageFolderSource, image_source),  # FolderLoader reads only what both sources have
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


def load_hf_arrays(
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
) -> ArrayDataset:
    """Decode every usable image of one split into an :class:`ArrayDataset` (row order), for eval / embed.

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
    loader = FolderLoader(
        cast(ImageFolderSource, image_source),
        min(batch_size, len(image_source)),
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
    rows = torch.cat(used)
    # A bad row's slot holds the next decodable row, which also has its own slot: keep each row once.
    first = torch.full((len(image_source),), rows.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, rows, torch.arange(rows.shape[0]), reduce="amin")
    keep = first[first < rows.shape[0]]
    y = torch.cat(labels)[keep] if image_source.labels is not None else None
    return ArrayDataset(torch.cat(images)[keep], y, image_source.classes, name=image_source.root)


# ---------------------------------------------------------------------------------------------- streaming


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
                images.append(
                    decode_image(
                        _image_file(row[self.image_column]), self.size, channels=self.channels, min_size=self.min_size
                    )
                )
            except Exception as e:  # PIL raises many types on malformed data; each means "unusable image"
                images.append(None)
                value = row[self.image_column]
                where = value.get("path") if isinstance(value, Mapping) and value.get("path") else "a streamed row"
                bad.append((f"{self.name}: {where}", f"{type(e).__name__}: {e}"))
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
        name: str = "hf-stream",
    ) -> None:
        datasets = _datasets()
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
        stream = _undecoded(stream, image_col, label_col)
        if shuffle:
            stream = stream.shuffle(seed=seed, buffer_size=buffer_size)  # same seed on every rank: disjoint shards
        if self.world_size > 1:
            stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        assert isinstance(stream, datasets.IterableDataset)
        self._stream = stream
        self.epoch, self.start_batch = 0, 0
        self.repeated_batches = 0
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
        new_bad: list[tuple[str, str]] = []
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
                    new_bad.extend(batch.bad)
                    yield batch
                done += 1
        finally:
            if new_bad:
                shown = "; ".join(f"{p} ({r})" for p, r in new_bad[:5])
                warnings.warn(
                    f"{len(new_bad)} unusable image(s) in {self.source.root} (each slot got another image of its "
                    f"batch): {shown}",
                    BadImageWarning,
                    stacklevel=3,
                )

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
) -> HFStreamLoader:
    """An :class:`HFStreamLoader` over ``source`` (``hf-stream:`` or ``hf:`` spec, or :class:`HFSource`).

    * A local dataset or one in the cache: its first ``L * batch_size * world_size`` rows (``L = len(loader)``,
      the rest left out as ``drop_last`` does) as an iterable dataset in ``world_size * k`` equal contiguous
      shards, so every rank's part holds exactly ``L`` batches.
    * A Hub name with ``download=True``: ``load_dataset(name, split=..., streaming=True)``, nothing written to
      the disk; ``num_examples`` defaults to the split size in the dataset's card, when it gives one.

    ``channels=None``: 1 for grey images (the feature's mode, or the first row's), else 3.
    """
    datasets = _datasets()
    src = _as_source(source)
    info = get_dist_info()
    world = info.world_size if world_size is None else world_size
    name = str(src) if src.split or not split else f"{src}:{split}"
    if not src.is_local and download:
        stream = _select_split(_load_all(src, download, streaming=True), src, split)
        if num_examples is None:
            splits = stream.info.splits or {}
            wanted = src.split or split
            known = [splits[p].num_examples for p in (wanted or "").split("+") if p in splits]
            num_examples = sum(known) if known and len(known) == len((wanted or "").split("+")) else None
        if channels is None:
            image_col = find_columns(stream.features, data_column, label_column)[0]
            first = next(iter(_undecoded(stream, image_col, None).take(1)))
            with PILImage.open(_image_file(first[image_col])) as img:
                channels = 1 if img.mode in _GREY_MODES else 3
    else:
        dataset = open_hf_dataset(src, split, download=download)
        image_col = find_columns(dataset.features, data_column, label_column)[0]
        channels = _guess_channels(dataset, image_col) if channels is None else channels
        n = len(dataset) if num_examples is None else min(num_examples, len(dataset))
        per_rank = n // (batch_size * world) * batch_size
        if per_rank == 0:
            raise ValueError(
                f"{name} has {n} rows, fewer than one global batch of {batch_size} x {world} processes; "
                "lower batch_size"
            )
        workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        k = _divisor_at_most(per_rank, max(4 * workers, 1))
        stream = dataset.select(range(per_rank * world)).to_iterable_dataset(num_shards=world * k)
        num_examples = per_rank * world
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
        name=name,
    )
