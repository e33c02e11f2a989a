"""Data kinds: one per modality (:class:`ImageKind`, :class:`SignalKind`, :class:`TableKind` and the two-modality
:class:`PairKind`), each answering the same questions: the training loader and its views, the input the encoder
sees (shape and normalisation), the kNN monitor, and a labelled split for evaluation (:meth:`DataKind.load_split`).
Adding a modality is one new :class:`DataKind` here (plus its views and encoder as leaves)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml
from torch import Tensor

from vicreg.augment.bands import auto_recipe, band_views
from vicreg.augment.images import image_views
from vicreg.augment.pairs import PairViews, TensorPair
from vicreg.augment.signals import signal_views
from vicreg.augment.tabular import table_views
from vicreg.build.encoders import Input, encoder_specs, model_from_specs
from vicreg.checkpoint import CheckpointError
from vicreg.config import TrainConfig
from vicreg.data import (
    Dataset,
    FloatDataset,
    FolderLoader,
    ImageDataset,
    ImageFolderSource,
    InMemoryLoader,
    channel_stats,
    folder_loader,
    has_splits,
    is_image_folder,
    load,
    load_at_size,
    load_float_rows,
    load_pairs,
    scan_folder,
    shorter_sides,
)
from vicreg.data.bands import BandImages, BandStats, band_format, band_source_has_test, parse_window, read_bands
from vicreg.data.hf import (
    HFStreamLoader,
    hf_loader,
    hf_splits,
    hf_stream_loader,
    is_hf_source,
    load_hf_images,
    parse_hf_source,
)
from vicreg.data.loaders import decode_folder
from vicreg.distributed import DistInfo
from vicreg.htmlreport.thumbs import image_thumbnails, signal_images, signal_thumbnails, table_texts
from vicreg.models import EncoderSpec, VICReg
from vicreg.monitors import KnnMonitor

__all__ = [
    "KINDS",
    "BandKind",
    "BatchLoader",
    "DataKind",
    "ImageKind",
    "PairKind",
    "SignalKind",
    "Split",
    "TableKind",
    "TrainingData",
    "choose_unset",
    "data_kind",
    "run_data_kind",
]

LabelFreeViews = Callable[[Tensor, torch.Generator], Any]
"""``(rows, generator)`` -> one augmented copy or a pair of copies, as the encoder takes them."""
Preview = tuple[list[str] | None, list[str] | None]
"""What a point of the report's explorer shows: thumbnails (PNG data URIs) or texts, one per row (or ``None``)."""

Views = Any  # a views object: views(x, generator=g) -> (v_a, v_b); PaperViews also has .multi (local crops)
BatchLoader = InMemoryLoader | FolderLoader | HFStreamLoader


@dataclass
class TrainingData:
    """What training needs from a data kind; :meth:`model` builds the matching model."""

    kind: DataKind
    loader: BatchLoader
    views: Views
    inputs: tuple[Input, Input]
    """The input of branch A and of branch B (the same object when both see the same data)."""
    num_classes: int
    """> 0 when the training rows have labels (for the online linear probe)."""
    monitor: KnnMonitor | None
    summary: dict[str, Any]
    """Source, split, count, shape and classes, in words and numbers, for the run header."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What the checkpoint's ``data_kind`` stores beside the kind's name (multi-band data: the band statistics
    and the DICOM window), to feed and show the data as training did without reading it again."""
    config: TrainConfig | None = None
    """The run's config with the settings it left unset chosen (:func:`choose_unset`): what training uses."""
    chosen: tuple[str, ...] = ()
    """One line per setting chosen from the data or the device, naming the flag that fixes it."""

    def model(self, cfg: TrainConfig) -> tuple[VICReg, EncoderSpec, EncoderSpec | None]:
        """A freshly initialised model for this data (:func:`~vicreg.build.model_from_specs`), and the
        descriptions that rebuild its encoder(s)."""
        spec, spec_b = encoder_specs(cfg, self.inputs)
        return model_from_specs(cfg.model, spec, spec_b), spec, spec_b


@dataclass(frozen=True)
class Split:
    """One split for evaluation / embedding: the rows as the encoder's data kind holds them."""

    data: Dataset | BandImages
    native_shape: tuple[int, ...] | None = None
    """Images: their size before resizing (``None``: an image folder, decoded straight to the size)."""
    paths: list[str] | None = None
    """Image folders: the file of each row."""
    source_index: Tensor | None = None
    """Image folders: each row's position in the folder's scan order (``None``: the source's rows, in order)."""
    skipped: tuple[str, ...] = ()
    """Image folders: the unusable files, left out (their rows are absent)."""


class DataKind(ABC):
    """One modality: how its data is loaded, viewed and fed to an encoder."""

    name: ClassVar[str]

    @abstractmethod
    def training_data(self, cfg: TrainConfig, info: DistInfo, device: torch.device) -> TrainingData:
        """The training loader, views, inputs and monitor of ``cfg``."""

    @abstractmethod
    def load_split(self, source: str, split: str, spec: EncoderSpec, *, download: bool = False) -> Split:
        """One split of ``source`` as encoder ``spec`` takes it (size, channels, features)."""

    def has_splits(self, source: str) -> bool:
        """Whether ``source`` has its own test split (else evaluation makes a seeded one)."""
        return has_splits(source)

    def sample_split(
        self, source: str, split: str, spec: EncoderSpec, pick: Callable[[int], Tensor], *, download: bool = False
    ) -> Split:
        """The rows ``pick(n)`` (indices into the split's ``n`` rows) of one split, as :meth:`load_split` gives
        them; kinds that can read a few rows without the rest (image folders) override it."""
        whole = self.load_split(source, split, spec, download=download)
        index = pick(len(whole.data))
        paths = None if whole.paths is None else [whole.paths[i] for i in index.tolist()]
        return Split(whole.data.subset(index), whole.native_shape, paths)

    @abstractmethod
    def label_free_views(self, cfg: TrainConfig, spec: EncoderSpec, rows: Dataset | BandImages) -> LabelFreeViews:
        """The training views of ``cfg`` for ``rows`` of this kind (as :meth:`load_split` gives them to encoder
        ``spec``): ``(rows, generator)`` -> augmented copies, the surrogate classes of LiDAR."""

    def preview(self, rows: Tensor) -> Preview:
        """How rows (as :meth:`load_split` gives them) look in the HTML report: ``(thumbnails, texts)``."""
        return None, None

    def sprite(self, rows: Tensor) -> Tensor | np.ndarray | None:
        """uint8 pictures ``(N, C, H, W)`` of rows for TensorBoard's projector (``None``: no picture)."""
        return None


def _uint8_images(rows: Tensor) -> Tensor:
    """Images as uint8: 16-bit bands scaled per image to 0..255 (what a screen shows)."""
    if rows.dtype == torch.uint8:
        return rows
    x = rows.float()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-6) * 255).round().to(torch.uint8)


def _preview(modality: str, rows: Tensor) -> Preview:
    if modality == "image":
        return image_thumbnails(_uint8_images(rows)), None
    if modality == "signal":
        return signal_thumbnails(rows), None
    return None, table_texts(rows)


def _sprite(modality: str, rows: Tensor) -> Tensor | np.ndarray | None:
    if modality == "image":
        return _uint8_images(rows)
    if modality == "signal":
        return signal_images(rows)
    return None


def _check_batch(n: int, cfg: TrainConfig, what: str) -> None:
    if n < cfg.batch_size:
        raise ValueError(
            f"{cfg.data} has {n} training {what}, fewer than one batch of {cfg.batch_size}; lower --batch-size"
        )


def _shard(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    return {"seed": cfg.seed, "rank": info.rank, "world_size": info.world_size}


def _summary(data: Dataset | BandImages, source: str, split: str) -> dict[str, Any]:
    return {
        "source": source,
        "split": split,
        "count": len(data),
        "shape": list(data.rows.shape[1:]),
        "classes": len(data.classes) or (int(data.labels.max()) + 1 if data.labels is not None else 0),
    }


class ImageKind(DataKind):
    """Images: a named dataset, a dataset folder or array file (in memory), or an image folder (streamed).

    ``data_column`` / ``label_column``: the columns of a Hugging Face source (default: found from its features);
    ``root``: the folder searched first for named datasets by :meth:`load_split` (training reads the config's
    ``data_root``)."""

    name = "image"

    def __init__(
        self,
        data_column: str = "",
        label_column: str = "",
        root: str | os.PathLike[str] | None = None,
        window: str = "",
    ) -> None:
        self.columns: dict[str, Any] = {"data_column": data_column or None, "label_column": label_column or None}
        self.root = root
        self.window = window

    def _streamed(
        self, cfg: TrainConfig, info: DistInfo, min_size: int | None = None
    ) -> tuple[FolderLoader | HFStreamLoader, str, int]:
        """The loader of an image folder or a Hugging Face dataset (decoded in workers), its split and size;
        ``min_size``: an image folder's smallest usable image (``None``: the size, never enlarged)."""
        per_rank = cfg.batch_size // info.world_size
        size = cfg.image_size or cfg.views.size
        common: dict[str, Any] = {"num_workers": cfg.workers, **_shard(cfg, info)}
        if not is_hf_source(cfg.data):
            loader = folder_loader(
                Path(cfg.data).expanduser(),
                size,
                per_rank,
                shuffle=True,
                drop_last=True,
                strict=cfg.strict_data,
                min_size=min_size,
                **common,
            )
            return loader, "image folder", len(loader.source)
        hf: dict[str, Any] = {**self.columns, "download": cfg.download, "split": "train"}
        if parse_hf_source(cfg.data).streaming:
            stream = hf_stream_loader(cfg.data, size, per_rank, shuffle=True, **hf, **common)
            try:
                count = len(stream) * cfg.batch_size
            except TypeError as err:
                raise ValueError(
                    f"{cfg.data}: the stream does not say how many rows it holds, so epochs cannot be counted; use "
                    "a dataset whose card gives its split sizes, or save it with save_to_disk and use hf:"
                ) from err
            return stream, "train (streamed)", count
        loader = hf_loader(
            cfg.data, size, per_rank, shuffle=True, drop_last=True, strict=cfg.strict_data, **hf, **common
        )
        return loader, "train", len(loader.source)

    def training_data(self, cfg: TrainConfig, info: DistInfo, device: torch.device) -> TrainingData:
        if not is_hf_source(cfg.data) and band_format(cfg.data) is not None:  # multi-band / 16-bit images
            return BandKind(cfg.window).training_data(cfg, info, device)
        per_rank = cfg.batch_size // info.world_size
        path = Path(cfg.data).expanduser()
        loader: BatchLoader
        monitor = None
        if is_image_folder(path) or is_hf_source(cfg.data):
            folder = is_image_folder(path) and not is_hf_source(cfg.data)
            measure = folder and cfg.views.size == 0 and not cfg.image_size  # a size from the data enlarges the few
            sides = shorter_sides(scan_folder(path)[0], seed=cfg.seed) if measure else []  # smaller images
            cfg, chosen = choose_unset(cfg, device, sides)
            streamed, split, count = self._streamed(cfg, info, 0 if measure else None)
            streamed.set_epoch(0)
            first = next(iter(streamed))[0]
            mean, std = channel_stats(first)
            channels, classes = first.shape[1], len(streamed.source.classes)
            loader = streamed
            size = first.shape[-1]
            summary = {
                "source": cfg.data,
                "split": split,
                "count": count,
                "shape": [channels, size, size],
                "classes": classes,
            }
        else:
            train_set = load(cfg.data, "train", download=cfg.download, strict=cfg.strict_data, root=cfg.data_root)
            cfg, chosen = choose_unset(cfg, device, [min(train_set.image_size)])
            _check_batch(len(train_set), cfg, "images")
            loader = InMemoryLoader(train_set.to(device), per_rank, shuffle=True, drop_last=True, **_shard(cfg, info))
            mean, std, channels = train_set.mean, train_set.std, train_set.channels
            classes = 0 if train_set.labels is None else int(train_set.labels.max()) + 1
            summary = _summary(train_set, cfg.data, "train")
        views = image_views(cfg.views, mean, std, channels)
        inp = Input(self.name, (channels, cfg.views.size, cfg.views.size), views.mean, views.std)
        if isinstance(loader, InMemoryLoader) and cfg.eval_split and cfg.knn_every > 0:
            monitor = self._monitor(cfg, train_set, inp)
        return TrainingData(self, loader, views, (inp, inp), classes, monitor, summary, config=cfg, chosen=chosen)

    def _monitor(self, cfg: TrainConfig, train_set: ImageDataset, inp: Input) -> KnnMonitor | None:
        if train_set.labels is None:
            return None
        test_set: ImageDataset | None = None
        if has_splits(cfg.data):  # one labelled array has no split: the monitor holds out training rows
            try:
                test_set = load(cfg.data, cfg.eval_split, download=cfg.download, root=cfg.data_root)
            except (FileNotFoundError, ValueError):
                return None
            if test_set.labels is None:
                return None
        return KnnMonitor(
            train_set.images,
            train_set.labels,
            None if test_set is None else test_set.images,
            None if test_set is None else test_set.labels,
            inp.mean,
            inp.std,
        )

    def load_split(self, source: str, split: str, spec: EncoderSpec, *, download: bool = False) -> Split:
        size = spec.input_shape[-1] if len(spec.input_shape) == 3 else 0
        if size < 1:
            raise CheckpointError(f"the encoder's description has no image size ({spec.input_shape}); re-export it")
        if not is_hf_source(source) and band_format(source) is not None:
            return BandKind(self.window).load_split(source, split, spec, download=download)
        if is_hf_source(source):
            data = load_hf_images(
                source, split, size=size, channels=spec.in_channels, download=download, **self.columns
            )
            return Split(data)
        got = load_at_size(source, split, size=size, channels=spec.in_channels, download=download, root=self.root)
        return Split(got.data, got.native_size, got.paths, got.source_index, got.skipped)

    def has_splits(self, source: str) -> bool:
        if is_hf_source(source):
            return parse_hf_source(source).split is None and "test" in hf_splits(source)
        if band_format(source) is not None:
            return band_source_has_test(source)
        return has_splits(source)

    def sample_split(
        self, source: str, split: str, spec: EncoderSpec, pick: Callable[[int], Tensor], *, download: bool = False
    ) -> Split:
        path = Path(source).expanduser()
        bands = not is_hf_source(source) and band_format(source) is not None  # read whole (load_split hands over)
        if bands or is_hf_source(source) or not is_image_folder(path):
            return super().sample_split(source, split, spec, pick, download=download)
        folder = ImageFolderSource(path, spec.input_shape[-1], channels=spec.in_channels)
        index = pick(len(folder)).tolist()  # decode only the rows picked, not the whole folder
        folder.files = [folder.files[i] for i in index]
        folder.labels = None if folder.labels is None else [folder.labels[i] for i in index]
        data, paths, _, _ = decode_folder(folder)
        return Split(data, None, paths)

    def label_free_views(self, cfg: TrainConfig, spec: EncoderSpec, rows: Dataset | BandImages) -> LabelFreeViews:
        if isinstance(rows, BandImages):  # multi-band / 16-bit images: their own views
            return BandKind(self.window).label_free_views(cfg, spec, rows)
        views = image_views(cfg.views, spec.mean, spec.std, spec.in_channels)
        return lambda x, generator: views(x, generator=generator)

    def preview(self, rows: Tensor) -> Preview:
        return _preview(self.name, rows)

    def sprite(self, rows: Tensor) -> Tensor | np.ndarray | None:
        return _sprite(self.name, rows)


class BandKind(DataKind):
    """Multi-band and high-bit-depth images (:mod:`vicreg.data.bands`): a ``.npy``/``.npz`` of ``(N, C, H, W)``
    images that are not 8-bit grey or RGB, a folder of such TIFFs, or a folder of DICOM files (``window``: the
    DICOM window, ``""``, ``"file"`` or ``"CENTER,WIDTH"``).

    The images stay in their own dtype on the device (``uint16`` is 2 bytes a value until the views convert it);
    per-band statistics of the training split (percentiles ``cfg.band_percentiles``) give the encoder's
    normalisation and the views' working range (:func:`vicreg.augment.bands.band_views`); the encoder reads
    ``C`` channels. :class:`ImageKind` hands such sources to this kind, so the encoder's input stays ``image``.
    """

    name = "image"

    def __init__(self, window: str = "") -> None:
        self.window = window

    def training_data(self, cfg: TrainConfig, info: DistInfo, device: torch.device) -> TrainingData:
        train_set = read_bands(cfg.data, "train", size=cfg.image_size or None, window=parse_window(cfg.window))
        _check_batch(len(train_set), cfg, "images")
        cfg, chosen = choose_unset(cfg, device, [cfg.band_views.size])  # the band views have their own size
        stats = train_set.stats(percentiles=cfg.band_percentiles)
        loader = InMemoryLoader(
            train_set.images.to(device),
            cfg.batch_size // info.world_size,
            labels=None if train_set.labels is None else train_set.labels.to(device),
            shuffle=True,
            drop_last=True,
            **_shard(cfg, info),
        )
        views = band_views(cfg.band_views, stats)
        size = cfg.band_views.size
        inp = Input(self.name, (train_set.channels, size, size), stats.mean, stats.std)
        monitor = None
        if cfg.eval_split and cfg.knn_every > 0 and train_set.labels is not None:
            test = None
            if band_source_has_test(cfg.data):
                test = read_bands(cfg.data, "test", window=parse_window(cfg.window))
            if test is None or test.labels is not None:
                monitor = KnnMonitor(
                    train_set.images,
                    train_set.labels,
                    None if test is None else test.images,
                    None if test is None else test.labels,
                    inp.mean,
                    inp.std,
                )
        classes = 0 if train_set.labels is None else int(train_set.labels.max()) + 1
        summary = _summary(train_set, cfg.data, "train")
        recipe = cfg.band_views.recipe
        words = f"{auto_recipe(train_set.channels)} (auto)" if recipe == "auto" else recipe
        rgb = f", RGB operations on bands {list(cfg.band_views.rgb_bands)}" if cfg.band_views.rgb_bands else ""
        lo_p, hi_p = cfg.band_percentiles
        summary["views"] = (
            f"band views, recipe {words}, {size} px{rgb}; {train_set.channels} bands of "
            f"{str(train_set.images.dtype).removeprefix('torch.')}, normalised by per-band statistics within the "
            f"{lo_p:g}-{hi_p:g} percentiles" + (f"; DICOM window {cfg.window}" if cfg.window else "")
        )
        meta = {"band_stats": stats.to_dict(), "band_percentiles": list(cfg.band_percentiles), "window": cfg.window}
        return TrainingData(self, loader, views, (inp, inp), classes, monitor, summary, meta, cfg, chosen)

    def load_split(self, source: str, split: str, spec: EncoderSpec, *, download: bool = False) -> Split:
        size = spec.input_shape[-1]
        data = read_bands(source, split, window=parse_window(self.window))
        native = data.image_size
        if data.channels != spec.in_channels:
            raise ValueError(
                f"{source} has {data.channels} bands but the encoder was trained on {spec.in_channels}; pass data "
                "with the training run's bands, in its order"
            )
        return Split(data.resized(size), native)

    def has_splits(self, source: str) -> bool:
        return band_source_has_test(source)

    def label_free_views(self, cfg: TrainConfig, spec: EncoderSpec, rows: Dataset | BandImages) -> LabelFreeViews:
        """The run's band views, normalising with the encoder's statistics; the photometric range (the
        percentiles) is read from ``rows``, the held-out sample."""
        assert isinstance(rows, BandImages)
        sample = rows.stats(percentiles=cfg.band_percentiles)
        views = band_views(cfg.band_views, BandStats(spec.mean, spec.std, sample.low, sample.high))
        return lambda x, generator: views(x, generator=generator)

    def preview(self, rows: Tensor) -> Preview:
        return _preview(self.name, rows)

    def sprite(self, rows: Tensor) -> Tensor | np.ndarray | None:
        return _sprite(self.name, rows)


class _FloatKind(DataKind):
    """Float rows from a ``.npz`` file, ``aeon:<Name>`` or ``sklearn:<name>``, held on the training device."""

    array_kind: ClassVar[str]

    def _views(self, cfg: TrainConfig, side: FloatDataset) -> Any:
        raise NotImplementedError

    def training_data(self, cfg: TrainConfig, info: DistInfo, device: torch.device) -> TrainingData:
        cfg, chosen = choose_unset(cfg, device)
        train_set = load_float_rows(cfg.data, "train", kind=self.name)  # type: ignore[arg-type]
        _check_batch(len(train_set), cfg, "rows")
        loader = InMemoryLoader(
            train_set.x.to(device), cfg.batch_size // info.world_size, shuffle=True, drop_last=True, **_shard(cfg, info)
        )
        views = self._views(cfg, train_set)
        inp = Input(self.name, tuple(train_set.x.shape[1:]), train_set.mean, train_set.std)
        monitor = None
        if cfg.eval_split and cfg.knn_every > 0 and train_set.labels is not None:
            test = _optional_split(lambda: load_float_rows(cfg.data, cfg.eval_split, kind=self.name))  # type: ignore[arg-type]
            if test is not None and test.labels is not None:
                monitor = KnnMonitor(train_set.x, train_set.labels, test.x, test.labels, inp.mean, inp.std)
        summary = _summary(train_set, cfg.data, "train")
        return TrainingData(self, loader, views, (inp, inp), 0, monitor, summary, config=cfg, chosen=chosen)

    def load_split(self, source: str, split: str, spec: EncoderSpec, *, download: bool = False) -> Split:
        data = load_float_rows(source, split, kind=self.name)  # type: ignore[arg-type]
        _check_width(data, spec)
        return Split(data)

    def has_splits(self, source: str) -> bool:
        if source.startswith(("aeon:", "sklearn:")):
            return True
        try:
            load_float_rows(source, "test", kind=self.name)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    def preview(self, rows: Tensor) -> Preview:
        return _preview(self.name, rows)

    def sprite(self, rows: Tensor) -> Tensor | np.ndarray | None:
        return _sprite(self.name, rows)


def _check_width(data: Dataset, spec: EncoderSpec) -> None:
    if spec.input_shape and data.rows.shape[1] != spec.input_shape[0]:
        what = "features" if spec.kind == "table" else "channels"
        raise ValueError(
            f"{data.name} has {data.rows.shape[1]} {what} but the encoder was trained on {spec.input_shape[0]}; "
            "pass data of the training run's layout"
        )


def _optional_split(read: Callable[[], FloatDataset]) -> FloatDataset | None:
    try:
        return read()
    except KeyError:  # the file has no such split
        return None


class SignalKind(_FloatKind):
    """Signals / time series ``(N, C, T)``."""

    name = "signal"

    def _views(self, cfg: TrainConfig, side: FloatDataset) -> Any:
        return signal_views(cfg.signal_views, side.mean, side.std)

    def label_free_views(self, cfg: TrainConfig, spec: EncoderSpec, rows: Dataset | BandImages) -> LabelFreeViews:
        views = signal_views(cfg.signal_views, spec.mean, spec.std)  # standardised as in training
        return lambda x, generator: views(x, generator=generator)


class TableKind(_FloatKind):
    """Table rows ``(N, F)``."""

    name = "table"

    def _views(self, cfg: TrainConfig, side: FloatDataset) -> Any:
        return table_views(cfg.table_views, side.x)

    def label_free_views(self, cfg: TrainConfig, spec: EncoderSpec, rows: Dataset | BandImages) -> LabelFreeViews:
        assert isinstance(rows, FloatDataset)
        views = table_views(cfg.table_views, rows.x)  # corruption draws from the marginals of the rows measured
        return lambda x, generator: views(x, generator=generator)


def _side(x: np.ndarray, labels: Tensor | None, modality: str, name: str) -> Dataset:
    """One side of a pair as the dataset type of its modality."""
    if modality == "image":
        return ImageDataset.from_arrays(x, labels, name=name)
    return FloatDataset.from_arrays(x, labels, kind="signal" if modality == "signal" else "table", name=name)


def _one_view(cfg: TrainConfig, modality: str, side: Dataset, branch: str) -> tuple[Callable[..., Tensor], Input]:
    """Branch ``branch``'s single view of its side of a pair, and the input its encoder sees."""
    views: Any
    if isinstance(side, ImageDataset):
        views = image_views(cfg.views, side.mean, side.std, side.channels)
        inp = Input(modality, (side.channels, cfg.views.size, cfg.views.size), views.mean, views.std)
    else:
        views = (
            signal_views(cfg.signal_views, side.mean, side.std)
            if modality == "signal"
            else table_views(cfg.table_views, side.x)
        )
        inp = Input(modality, tuple(side.x.shape[1:]), side.mean, side.std)
    config = views.view_a if branch == "a" else views.view_b
    return (lambda x, generator: views.view(x, config, generator)), inp


class PairKind(DataKind):
    """Two modalities, one per branch: a ``.npz`` with row-aligned ``x_a`` and ``x_b`` (``_test`` keys for a test
    split). Evaluation, embedding and export use branch A (``x_a``)."""

    name = "pair"

    def __init__(self, modality_a: str, modality_b: str) -> None:
        self.modality_a, self.modality_b = modality_a, modality_b

    def training_data(self, cfg: TrainConfig, info: DistInfo, device: torch.device) -> TrainingData:
        x_a, x_b, labels = load_pairs(cfg.data, "train")
        side_a = _side(x_a, labels, self.modality_a, f"{cfg.data}:x_a")
        side_b = _side(x_b, None, self.modality_b, f"{cfg.data}:x_b")
        images = [side for side in (side_a, side_b) if isinstance(side, ImageDataset)]
        cfg, chosen = choose_unset(cfg, device, [min(images[0].image_size)] if images else [])
        _check_batch(len(side_a), cfg, "rows")
        rows = TensorPair(side_a.rows.to(device), side_b.rows.to(device))
        loader = InMemoryLoader(
            rows, cfg.batch_size // info.world_size, shuffle=True, drop_last=True, **_shard(cfg, info)
        )
        view_a, inp_a = _one_view(cfg, self.modality_a, side_a, "a")
        view_b, inp_b = _one_view(cfg, self.modality_b, side_b, "b")
        monitor = None
        if cfg.eval_split and cfg.knn_every > 0 and labels is not None:
            try:
                t_a, _, t_labels = load_pairs(cfg.data, cfg.eval_split)
            except KeyError:  # no test arrays in the file: no monitor
                t_labels = None
            if t_labels is not None:
                test = _side(t_a, t_labels, self.modality_a, f"{cfg.data}:x_a_{cfg.eval_split}")
                assert side_a.labels is not None
                monitor = KnnMonitor(side_a.rows, side_a.labels, test.rows, t_labels, inp_a.mean, inp_a.std)
        summary = _summary(side_a, cfg.data, "train")
        summary["shape"] = f"x_a {list(side_a.rows.shape[1:])} + x_b {list(side_b.rows.shape[1:])}"
        views = PairViews(view_a, view_b)
        return TrainingData(self, loader, views, (inp_a, inp_b), 0, monitor, summary, config=cfg, chosen=chosen)

    def load_split(self, source: str, split: str, spec: EncoderSpec, *, download: bool = False) -> Split:
        try:
            x_a, _, labels = load_pairs(source, split)
        except KeyError as err:
            raise ValueError(str(err).strip("'\"")) from err
        data = _side(x_a, labels, self.modality_a, f"{source}:x_a:{split}")
        if isinstance(data, ImageDataset):
            size = spec.input_shape[-1]
            return Split(data.with_channels(spec.in_channels).resized(size), data.image_size)
        _check_width(data, spec)
        return Split(data)

    def has_splits(self, source: str) -> bool:
        try:
            load_pairs(source, "test")
        except KeyError:
            return False
        return True

    def label_free_views(self, cfg: TrainConfig, spec: EncoderSpec, rows: Dataset | BandImages) -> LabelFreeViews:
        assert not isinstance(rows, BandImages)  # pairs hold 8-bit images or float rows
        view, _ = _one_view(cfg, self.modality_a, rows, "a")  # branch A's view: eval measures branch A
        return view

    def preview(self, rows: Tensor) -> Preview:
        return _preview(self.modality_a, rows)  # the first side: what evaluation and embedding read

    def sprite(self, rows: Tensor) -> Tensor | np.ndarray | None:
        return _sprite(self.modality_a, rows)


KINDS: dict[str, type[DataKind]] = {"image": ImageKind, "signal": SignalKind, "table": TableKind}


def data_kind(
    modality: str,
    modality_b: str = "",
    *,
    data_column: str = "",
    label_column: str = "",
    root: str | os.PathLike[str] | None = None,
    window: str = "",
) -> DataKind:
    """The data kind of a run's ``modality`` (and ``modality_b`` for two-modality pairs); ``data_column``,
    ``label_column``, ``root`` and ``window``: see :class:`ImageKind` (the other kinds read no names or
    columns)."""
    if modality_b:
        return PairKind(modality, modality_b)
    if modality not in KINDS:
        raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(KINDS)}")
    if modality == "image":
        return ImageKind(data_column, label_column, root, window)
    return KINDS[modality]()


def run_data_kind(cfg: TrainConfig) -> DataKind:
    """The data kind of a training config."""
    return data_kind(
        cfg.modality,
        cfg.modality_b,
        data_column=cfg.data_column,
        label_column=cfg.label_column,
        root=cfg.data_root,
        window=cfg.window,
    )


# ------------------------------------------------------------------------------------------------ unset settings

SIZE_RANGE = (16, 224)
"""Views sized from the data: its median shorter side, kept within this range."""
CPU_EXPANDER = "1024-1024-1024"
"""The expander chosen on a CPU (the fashion-mnist-cpu preset's); a GPU gets the paper's."""
PAPER_EXPANDER = "8192-8192-8192"


def choose_unset(
    cfg: TrainConfig, device: torch.device, sides: Sequence[int] = ()
) -> tuple[TrainConfig, tuple[str, ...]]:
    """``cfg`` with the settings it left unset chosen from the data and the device, and one line per choice that
    names the flag fixing it: ``views.size`` 0 (the median of ``sides``, the images' shorter sides, within
    :data:`SIZE_RANGE`), ``model.backbone`` empty (small_cnn on a CPU, resnet18 on a GPU; resnet1d for signals,
    mlp for tables; with it ``model.small_images``, on for views of at most 96 px), ``model.expander`` empty
    (:data:`CPU_EXPANDER` on a CPU, the paper's on a GPU). A run folder that already holds a
    checkpoint keeps the choices of its first start (its config.yaml), whatever the device now."""
    stored = _first_choices(Path(cfg.out))
    views, model, chosen = cfg.views, cfg.model, []
    gpu = device.type in ("cuda", "mps")
    first = "as when this run started (its config.yaml)"
    if views.size == 0 and "image" in (cfg.modality, cfg.modality_b):
        size = stored.get("views", {}).get("size") or 0
        why = first
        if not size and sides:
            median = int(np.median(sides))
            size = min(max(median, SIZE_RANGE[0]), SIZE_RANGE[1])
            why = "the data's median shorter side" + ("" if size == median else f", {median}, kept within {SIZE_RANGE}")
        elif not size:
            size, why = 32, "the image sizes of this source are not read ahead"
        views = replace(views, size=size)
        chosen.append(f"views.size {size} ({why}; --views.size fixes it)")
    backbone, expander, small = model.backbone, model.expander, model.small_images
    if not backbone:
        backbone = stored.get("model", {}).get("backbone") or ""
        why = first
        if backbone:
            small = bool(stored.get("model", {}).get("small_images", small))
        else:
            backbone = {"signal": "resnet1d", "table": "mlp"}.get(cfg.modality, "resnet18" if gpu else "small_cnn")
            why = f"for {cfg.modality}s" if cfg.modality != "image" else ("on a GPU" if gpu else "on a CPU")
            small = views.size <= 96  # the stem goes with the chosen backbone
        chosen.append(f"model.backbone {backbone} ({why}; --model.backbone fixes it)")
        if backbone.startswith("resnet") and backbone != "resnet1d":
            chosen.append(
                f"model.small_images {small} (with the backbone, views of {views.size} px; give --model.backbone to "
                "set --model.small-images)"
            )
    if not expander:
        expander = stored.get("model", {}).get("expander") or ""
        why = first
        if not expander:
            expander = PAPER_EXPANDER if gpu else CPU_EXPANDER
            why = "the paper's, on a GPU" if gpu else f"on a CPU; a GPU gets the paper's {PAPER_EXPANDER}"
        chosen.append(f"model.expander {expander} ({why}; --model.expander fixes it)")
    model = replace(model, backbone=backbone, expander=expander, small_images=small)
    return replace(cfg, views=views, model=model), tuple(chosen)


def _first_choices(run_dir: Path) -> dict[str, Any]:
    """The config a run folder with a checkpoint started with (empty when none, or unreadable)."""
    folder = run_dir / "checkpoints"
    if not (folder.is_dir() and any(folder.glob("*.pt"))):
        return {}
    try:
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return stored if isinstance(stored, dict) else {}
