"""The build layer: the one place where a configuration becomes objects.

Everything above it (``train``, ``evaluate.runner``, ``evaluate.embed``, ``report``, ``cli``) asks this module and
never branches on the modality itself:

* runtime: the process group (:func:`setup_distributed`), the device (:func:`resolve_device`), the autocast
  dtype (:func:`autocast_dtype`) and the data root (:func:`use_data_root`);
* one *data kind* per modality (:class:`ImageKind`, :class:`SignalKind`, :class:`TableKind` and the two-modality
  :class:`PairKind`), each answering the same questions: the training loader and its views, the input the
  encoder sees (shape and normalisation), the kNN monitor, and a labelled split for evaluation
  (:meth:`DataKind.load_split`);
* the model: :func:`make_encoder` (a backbone and its :class:`~vicreg.models.EncoderSpec`) and
  :func:`build_model`;
* what a checkpoint stores to rebuild the model without the training data (:func:`checkpoint_meta`), and
  :func:`load_encoder`, which rebuilds it strictly from a run folder or checkpoint.

Adding a modality is one new :class:`DataKind` here (plus its views and encoder as leaves).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from vicreg.augment.images import image_views
from vicreg.augment.pairs import PairViews, TensorPair
from vicreg.augment.signals import signal_views
from vicreg.augment.tabular import table_views
from vicreg.checkpoint import CheckpointError, load_checkpoint, newest_good_checkpoint
from vicreg.config import ModelConfig, TrainConfig, config_from_dict
from vicreg.data import (
    ArrayDataset,
    Dataset,
    FloatArrayDataset,
    FolderLoader,
    InMemoryLoader,
    channel_stats,
    folder_loader,
    has_splits,
    is_image_folder,
    load,
    load_arrays,
    load_at_size,
    load_pairs,
)
from vicreg.data.hf import (
    HFStreamLoader,
    hf_loader,
    hf_splits,
    hf_stream_loader,
    is_hf_source,
    load_hf_arrays,
    parse_hf_source,
)
from vicreg.distributed import DistInfo, get_dist_info
from vicreg.models import EncoderSpec, VICReg, build_backbone, feature_dim_of
from vicreg.monitors import KnnMonitor

__all__ = [
    "KINDS",
    "DataKind",
    "ImageKind",
    "LoadedEncoder",
    "PairKind",
    "SignalKind",
    "Split",
    "TableKind",
    "TrainingData",
    "autocast_dtype",
    "build_model",
    "checkpoint_meta",
    "data_kind",
    "find_checkpoint",
    "labelled_splits",
    "load_encoder",
    "make_encoder",
    "model_from_config",
    "random_init_model",
    "resolve_device",
    "run_data_kind",
    "run_dir_of",
    "setup_distributed",
    "use_data_root",
]

Views = Any  # a views object: views(x, generator=g) -> (v_a, v_b); PaperViews also has .multi (local crops)
BatchLoader = InMemoryLoader | FolderLoader | HFStreamLoader


# ------------------------------------------------------------------------------------------------ runtime


def setup_distributed(device: str) -> DistInfo:
    """Join torchrun's process group when there is one (NCCL on CUDA, gloo otherwise); a no-op alone."""
    info = get_dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        backend = "nccl" if use_cuda else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend)
        else:
            # torchrun keeps its key-value store across restarts (--max-restarts) and the process group's keys
            # are the same each time: restarted workers read the dead workers' gloo addresses and failed to
            # connect or hung (8 of 14 restarts; docs/reliability.md). A prefix per attempt keeps them apart.
            store, rank, world_size = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"vicreg/attempt{restart}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
        info = get_dist_info()
    return info


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` (this process's GPU, else MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    info = info or get_dist_info()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``fp32``: none) on ``device``; fp16 needs CUDA (its gradient scaler)."""
    if precision == "fp32":
        return None
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def use_data_root(root: str | os.PathLike[str] | None) -> None:
    """Put ``root`` first on the search path of named datasets (``$VICREG_DATA``); ``None`` changes nothing."""
    if root is None:
        return
    paths = [str(root)] + [p for p in os.environ.get("VICREG_DATA", "").split(os.pathsep) if p and p != str(root)]
    os.environ["VICREG_DATA"] = os.pathsep.join(paths)


# ------------------------------------------------------------------------------------------------ encoders


@dataclass(frozen=True)
class Input:
    """What one branch's encoder sees: the data kind, one sample's shape and its normalisation."""

    kind: str
    shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def make_encoder(name: str, model: ModelConfig, inp: Input, branch: str = "a") -> tuple[nn.Module, EncoderSpec]:
    """A freshly initialised backbone ``name`` for input ``inp``, with the config's width (and depth) options,
    and the :class:`EncoderSpec` that rebuilds it."""
    kwargs: dict[str, Any] = {"small_images": model.small_images, "in_channels": inp.shape[0]}
    width = model.width_b or model.width if branch == "b" else model.width
    if name in ("small_cnn", "resnet1d", "mlp"):
        kwargs["width"] = width
    if name == "mlp":
        kwargs["depth"] = model.depth
    module = build_backbone(name, **kwargs)
    dim = feature_dim_of(name, module)
    if dim is None:
        raise ValueError(f"cannot tell the feature size of backbone {name!r}; use a backbone that reports it")
    spec = EncoderSpec(name, kwargs, dim, inp.kind, inp.shape, inp.mean, inp.std)
    return module, spec


def build_model(
    model: ModelConfig, backbone: nn.Module, spec: EncoderSpec, backbone_b: nn.Module | None = None, spec_b: Any = None
) -> VICReg:
    """The VICReg model of ``model``'s expander settings around the given backbone(s)."""
    extra: dict[str, Any] = {}
    if backbone_b is not None:
        extra["backbone_b"], extra["feature_dim_b"] = backbone_b, spec_b.feature_dim
    if model.expander_b:
        extra["expander_b"] = model.expander_b
    return VICReg(backbone, model.expander, feature_dim=spec.feature_dim, **extra)


def model_from_config(cfg: TrainConfig, in_channels: int, input_shape: tuple[int, ...] | None = None) -> VICReg:
    """A freshly initialised model of ``cfg`` for one modality's input of ``in_channels`` (e.g. for benchmarks
    and FLOP counts; training builds its model from its data with :meth:`TrainingData.model`)."""
    shape = input_shape or (in_channels, cfg.views.size, cfg.views.size)
    inp = Input(cfg.modality, shape, (0.0,), (1.0,))
    return _encoders(cfg, (inp, inp))[0]


def _encoders(cfg: TrainConfig, inputs: tuple[Input, Input]) -> tuple[VICReg, EncoderSpec, EncoderSpec | None]:
    backbone, spec = make_encoder(cfg.model.backbone, cfg.model, inputs[0])
    backbone_b, spec_b = (None, None)
    if cfg.model.backbone_b:
        backbone_b, spec_b = make_encoder(cfg.model.backbone_b, cfg.model, inputs[1], "b")
    return build_model(cfg.model, backbone, spec, backbone_b, spec_b), spec, spec_b


# ------------------------------------------------------------------------------------------------ data kinds


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

    def model(self, cfg: TrainConfig) -> tuple[VICReg, EncoderSpec, EncoderSpec | None]:
        """A freshly initialised model for this data, and the specs that rebuild its encoder(s)."""
        return _encoders(cfg, self.inputs)


@dataclass(frozen=True)
class Split:
    """One split for evaluation / embedding: the rows as the encoder's data kind holds them."""

    data: Dataset
    native_shape: tuple[int, ...] | None = None
    """Images: their size before resizing (``None``: an image folder, decoded straight to the size)."""
    paths: list[str] | None = None
    """Image folders: the file of each row."""


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


def _check_batch(n: int, cfg: TrainConfig, what: str) -> None:
    if n < cfg.batch_size:
        raise ValueError(
            f"{cfg.data} has {n} training {what}, fewer than one batch of {cfg.batch_size}; lower --batch-size"
        )


def _shard(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    return {"seed": cfg.seed, "rank": info.rank, "world_size": info.world_size}


def _summary(data: Dataset, source: str, split: str) -> dict[str, Any]:
    return {
        "source": source,
        "split": split,
        "count": len(data),
        "shape": list(data.rows.shape[1:]),
        "classes": len(data.classes) or (int(data.labels.max()) + 1 if data.labels is not None else 0),
    }


class ImageKind(DataKind):
    """Images: a named dataset, a dataset folder or array file (in memory), or an image folder (streamed)."""

    name = "image"

    def __init__(self, data_column: str = "", label_column: str = "") -> None:
        self.columns: dict[str, Any] = {"data_column": data_column or None, "label_column": label_column or None}

    def _streamed(self, cfg: TrainConfig, info: DistInfo) -> tuple[FolderLoader | HFStreamLoader, str, int]:
        """The loader of an image folder or a Hugging Face dataset (decoded in workers), its split and size."""
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
        use_data_root(cfg.data_root)
        per_rank = cfg.batch_size // info.world_size
        path = Path(cfg.data).expanduser()
        loader: BatchLoader
        monitor = None
        if is_image_folder(path) or is_hf_source(cfg.data):
            streamed, split, count = self._streamed(cfg, info)
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
            train_set = load(cfg.data, "train", download=cfg.download, strict=cfg.strict_data)
            _check_batch(len(train_set), cfg, "images")
            loader = InMemoryLoader(train_set.to(device), per_rank, shuffle=True, drop_last=True, **_shard(cfg, info))
            mean, std, channels = train_set.mean, train_set.std, train_set.channels
            classes = 0 if train_set.labels is None else int(train_set.labels.max()) + 1
            summary = _summary(train_set, cfg.data, "train")
        views = image_views(cfg.views, mean, std, channels)
        inp = Input(self.name, (channels, cfg.views.size, cfg.views.size), views.mean, views.std)
        if isinstance(loader, InMemoryLoader) and cfg.eval_split and cfg.knn_every > 0:
            monitor = self._monitor(cfg, train_set, inp)
        return TrainingData(self, loader, views, (inp, inp), classes, monitor, summary)

    def _monitor(self, cfg: TrainConfig, train_set: ArrayDataset, inp: Input) -> KnnMonitor | None:
        if train_set.labels is None:
            return None
        test_set: ArrayDataset | None = None
        if has_splits(cfg.data):  # one labelled array has no split: the monitor holds out training rows
            try:
                test_set = load(cfg.data, cfg.eval_split, download=cfg.download)
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
        if is_hf_source(source):
            data = load_hf_arrays(
                source, split, size=size, channels=spec.in_channels, download=download, **self.columns
            )
            return Split(data)
        got = load_at_size(source, split, size=size, channels=spec.in_channels, download=download)
        return Split(got.data, got.native_size, got.paths)

    def has_splits(self, source: str) -> bool:
        if is_hf_source(source):
            return parse_hf_source(source).split is None and "test" in hf_splits(source)
        return has_splits(source)


class _FloatKind(DataKind):
    """Float rows from a ``.npz`` file, ``aeon:<Name>`` or ``sklearn:<name>``, held on the training device."""

    array_kind: ClassVar[str]

    def _views(self, cfg: TrainConfig, side: FloatArrayDataset) -> Any:
        raise NotImplementedError

    def training_data(self, cfg: TrainConfig, info: DistInfo, device: torch.device) -> TrainingData:
        train_set = load_arrays(cfg.data, "train", kind=self.name)  # type: ignore[arg-type]
        _check_batch(len(train_set), cfg, "rows")
        loader = InMemoryLoader(
            train_set.x.to(device), cfg.batch_size // info.world_size, shuffle=True, drop_last=True, **_shard(cfg, info)
        )
        views = self._views(cfg, train_set)
        inp = Input(self.name, tuple(train_set.x.shape[1:]), train_set.mean, train_set.std)
        monitor = None
        if cfg.eval_split and cfg.knn_every > 0 and train_set.labels is not None:
            test = _optional_split(lambda: load_arrays(cfg.data, cfg.eval_split, kind=self.name))  # type: ignore[arg-type]
            if test is not None and test.labels is not None:
                monitor = KnnMonitor(train_set.x, train_set.labels, test.x, test.labels, inp.mean, inp.std)
        return TrainingData(self, loader, views, (inp, inp), 0, monitor, _summary(train_set, cfg.data, "train"))

    def load_split(self, source: str, split: str, spec: EncoderSpec, *, download: bool = False) -> Split:
        data = load_arrays(source, split, kind=self.name)  # type: ignore[arg-type]
        _check_width(data, spec)
        return Split(data)

    def has_splits(self, source: str) -> bool:
        if source.startswith(("aeon:", "sklearn:")):
            return True
        try:
            load_arrays(source, "test", kind=self.name)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True


def _check_width(data: Dataset, spec: EncoderSpec) -> None:
    if spec.input_shape and data.rows.shape[1] != spec.input_shape[0]:
        what = "features" if spec.kind == "table" else "channels"
        raise ValueError(
            f"{data.name} has {data.rows.shape[1]} {what} but the encoder was trained on {spec.input_shape[0]}; "
            "pass data of the training run's layout"
        )


def _optional_split(read: Callable[[], FloatArrayDataset]) -> FloatArrayDataset | None:
    try:
        return read()
    except KeyError:  # the file has no such split
        return None


class SignalKind(_FloatKind):
    """Signals / time series ``(N, C, T)``."""

    name = "signal"

    def _views(self, cfg: TrainConfig, side: FloatArrayDataset) -> Any:
        return signal_views(cfg.signal_views, side.mean, side.std)


class TableKind(_FloatKind):
    """Table rows ``(N, F)``."""

    name = "table"

    def _views(self, cfg: TrainConfig, side: FloatArrayDataset) -> Any:
        return table_views(cfg.table_views, side.x)


def _side(x: np.ndarray, labels: Tensor | None, modality: str, name: str) -> Dataset:
    """One side of a pair as the dataset type of its modality."""
    if modality == "image":
        return ArrayDataset.from_arrays(x, labels, name=name)
    return FloatArrayDataset.from_arrays(x, labels, kind="signal" if modality == "signal" else "table", name=name)


def _one_view(cfg: TrainConfig, modality: str, side: Dataset, branch: str) -> tuple[Callable[..., Tensor], Input]:
    """Branch ``branch``'s single view of its side of a pair, and the input its encoder sees."""
    views: Any
    if isinstance(side, ArrayDataset):
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
        return TrainingData(self, loader, PairViews(view_a, view_b), (inp_a, inp_b), 0, monitor, summary)

    def load_split(self, source: str, split: str, spec: EncoderSpec, *, download: bool = False) -> Split:
        try:
            x_a, _, labels = load_pairs(source, split)
        except KeyError as err:
            raise ValueError(str(err).strip("'\"")) from err
        data = _side(x_a, labels, self.modality_a, f"{source}:x_a:{split}")
        if isinstance(data, ArrayDataset):
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


KINDS: dict[str, type[DataKind]] = {"image": ImageKind, "signal": SignalKind, "table": TableKind}


def data_kind(modality: str, modality_b: str = "", **options: str) -> DataKind:
    """The data kind of a run's ``modality`` (and ``modality_b`` for two-modality pairs); ``options``: the image
    kind's ``data_column`` / ``label_column`` for Hugging Face sources."""
    if modality_b:
        return PairKind(modality, modality_b)
    if modality not in KINDS:
        raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(KINDS)}")
    return ImageKind(**options) if modality == "image" else KINDS[modality]()


def run_data_kind(cfg: TrainConfig) -> DataKind:
    """The data kind of a training config."""
    return data_kind(cfg.modality, cfg.modality_b, data_column=cfg.data_column, label_column=cfg.label_column)


def _eval_kind(stored: Mapping[str, Any], spec: EncoderSpec, own_data: bool, options: Mapping[str, str]) -> DataKind:
    """The kind that reads evaluation data for encoder ``spec``: the run's own kind for its own data, else the
    kind of the encoder's input (e.g. an image dataset for the image branch of a pair run)."""
    if stored.get("name") == "pair" and own_data:
        return PairKind(str(stored.get("modality_a", spec.kind)), str(stored.get("modality_b", "")))
    return data_kind(spec.kind, **options)


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


def _require_labels(data: Dataset) -> None:
    if data.labels is None or int(data.labels.min()) < 0:
        raise ValueError(
            f"{data.name} has no labels (or unlabelled rows) and cannot be used for evaluation; pass a labelled "
            "dataset with --data (an image folder with one sub-folder per class, or a .npz with labels)"
        )


# ------------------------------------------------------------------------------------------------ checkpoints


def checkpoint_meta(data: TrainingData, spec: EncoderSpec, spec_b: EncoderSpec | None) -> dict[str, Any]:
    """What a checkpoint stores, beside the weights and the config, to rebuild and feed the model without
    reading the training data again: the data kind and each encoder's :class:`EncoderSpec`."""
    kind: dict[str, Any] = {"name": data.kind.name}
    if isinstance(data.kind, PairKind):
        kind.update(modality_a=data.kind.modality_a, modality_b=data.kind.modality_b)
    return {
        "data_kind": kind,
        "encoder": spec.to_dict(),
        "encoder_b": None if spec_b is None else spec_b.to_dict(),
    }


@dataclass(frozen=True)
class LoadedEncoder:
    """A trained model in eval mode with what is needed to feed it the way training did."""

    model: VICReg
    config: TrainConfig
    checkpoint: Path
    step: int
    spec: EncoderSpec
    """Branch A's encoder: architecture, input shape and normalisation."""
    spec_b: EncoderSpec | None
    data_kind: Mapping[str, Any]

    @property
    def channels(self) -> int:
        return self.spec.in_channels

    @property
    def mean(self) -> tuple[float, ...]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.spec.std

    @property
    def image_size(self) -> int:
        """The side of the training views (images); 0 for other kinds."""
        return self.spec.input_shape[-1] if self.spec.kind == "image" and len(self.spec.input_shape) == 3 else 0

    def kind_for(self, source: str | None, *, data_column: str = "", label_column: str = "") -> DataKind:
        """The data kind that reads ``source`` (``None``: the run's own training data) for this encoder;
        Hugging Face column names default to the training run's."""
        own = source is None or str(source) == str(self.config.data)
        options = {
            "data_column": data_column or (self.config.data_column if own else ""),
            "label_column": label_column or (self.config.label_column if own else ""),
        }
        return (
            _eval_kind(self.data_kind, self.spec, own, options)
            if self.spec.kind == "image"
            else _eval_kind(self.data_kind, self.spec, own, {})
        )


def find_checkpoint(run_or_checkpoint: str | os.PathLike[str]) -> Path:
    """The newest intact checkpoint of a run folder (``RUN/checkpoints/last.pt`` unless it is damaged), the
    path itself for a file."""
    path = Path(run_or_checkpoint).expanduser()
    if path.is_dir():
        ckpt = newest_good_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise CheckpointError(
                f"{path} is a folder without checkpoints/last.pt; pass a run folder of vicreg train or a .pt file"
            )
        return ckpt
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder (vicreg train --out) or a checkpoint file")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/x.pt`` -> ``RUN``; otherwise its folder)."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _config_of(state: Mapping[str, Any], path: Path) -> TrainConfig:
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise CheckpointError(f"{path} holds no training config or model weights; was it written by vicreg train?")
    try:
        return config_from_dict(state["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: its config cannot be read by this version of vicreg: {err}") from err


def _legacy_specs(
    state: Mapping[str, Any], cfg: TrainConfig, path: Path
) -> tuple[EncoderSpec, EncoderSpec | None, dict[str, Any]]:
    """The encoder specs of a checkpoint written before checkpoints carried them (vicreg 0.1.0 before the build
    layer): the input width is read from the first weight of each backbone, the normalisation from its
    ``normalize`` entry, or, when absent, from the training data as the run computed it."""
    weights = state["model"]

    def width_of(prefix: str, kind: str) -> int:
        ndim = {"image": 4, "signal": 3, "table": 2}[kind]
        for key, value in weights.items():
            if key.startswith(prefix) and value.ndim == ndim:
                return int(value.shape[1])
        raise CheckpointError(f"{path}: cannot tell the input width of {prefix.rstrip('.')} for {kind} data")

    kind = {"name": "pair", "modality_a": cfg.modality, "modality_b": cfg.modality_b} if cfg.modality_b else {}
    saved = state.get("normalize")
    specs = []
    for branch, modality, prefix in (("a", cfg.modality, "backbone."), ("b", cfg.modality_b, "backbone_b.")):
        name = cfg.model.backbone if branch == "a" else cfg.model.backbone_b
        if branch == "b" and not name:
            break
        channels = width_of(prefix, modality)
        shape = (channels, cfg.views.size, cfg.views.size) if modality == "image" else (channels,)
        if branch == "a" and isinstance(saved, dict) and "mean" in saved:
            mean = tuple(float(v) for v in saved["mean"])
            std = tuple(float(v) for v in saved["std"])
        else:
            mean, std = _derive_stats(cfg, branch)
        inp = Input(modality, shape, mean, std)
        with torch.device("meta"):
            _, spec = make_encoder(name, cfg.model, inp, branch)
        specs.append(spec)
    kind = kind or {"name": cfg.modality}
    return specs[0], specs[1] if len(specs) > 1 else None, kind


def _derive_stats(cfg: TrainConfig, branch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        data = run_data_kind(cfg).training_data(cfg, DistInfo(), torch.device("cpu"))
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(
            f"this checkpoint does not store its normalisation and its training data {cfg.data!r} cannot be read to "
            f"compute it again ({err}); make the training data available (--data-root)"
        ) from err
    inp = data.inputs[0 if branch == "a" else 1]
    return inp.mean, inp.std


def _specs_of(state: Mapping[str, Any], cfg: TrainConfig, path: Path) -> tuple[EncoderSpec, EncoderSpec | None, Any]:
    if "encoder" not in state:
        return _legacy_specs(state, cfg, path)
    try:
        spec = EncoderSpec.from_dict(state["encoder"])
        spec_b = None if state.get("encoder_b") is None else EncoderSpec.from_dict(state["encoder_b"])
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return spec, spec_b, dict(state.get("data_kind") or {"name": spec.kind})


def _model_from_specs(cfg: TrainConfig, spec: EncoderSpec, spec_b: EncoderSpec | None) -> VICReg:
    return build_model(cfg.model, spec.build(), spec, None if spec_b is None else spec_b.build(), spec_b)


def load_encoder(run_or_checkpoint: str | os.PathLike[str], device: torch.device | str = "cpu") -> LoadedEncoder:
    """The trained model of a run folder or checkpoint, on ``device``, in eval mode (loaded with strict=True),
    rebuilt from what the checkpoint stores: no training data is read and no shape is guessed."""
    path = find_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path)
    cfg = _config_of(state, path)
    spec, spec_b, kind = _specs_of(state, cfg, path)
    model = _model_from_specs(cfg, spec, spec_b)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes: {err}") from err
    model.to(device).eval()
    return LoadedEncoder(model, cfg, path, int(state.get("step", -1)), spec, spec_b, kind)


def random_init_model(enc: LoadedEncoder, seed: int = 0) -> VICReg:
    """The same architecture freshly initialised from ``seed`` (a baseline), without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_from_specs(enc.config, enc.spec, enc.spec_b)
    return model.eval()
