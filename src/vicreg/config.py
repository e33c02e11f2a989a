"""Training configuration: small frozen dataclasses with docstrings and validation, and named presets.

The CLI (``vicreg train``) is generated from these classes; ``--config FILE.yaml`` and flags override a preset.
Models, losses and optimisers never see these objects: the build layer (:mod:`vicreg.build`) unpacks them into
plain arguments. The views' settings are augment's own dataclasses, nested here (``views``, ``signal_views``,
``table_views``), not restated.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vicreg.augment.bands import BandViewsConfig
from vicreg.augment.images import ImageViewsConfig
from vicreg.augment.signals import SignalViewsConfig
from vicreg.augment.tabular import TableViewsConfig
from vicreg.loss import Gather
from vicreg.models import parse_expander_spec
from vicreg.trackers import parse_backends

ViewsConfig = ImageViewsConfig
"""The image views' settings (:class:`vicreg.augment.images.ImageViewsConfig`), nested as ``views``."""

__all__ = [
    "PRESETS",
    "BandViewsConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SignalViewsConfig",
    "TableViewsConfig",
    "TrainConfig",
    "ViewsConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config_file",
    "merge",
]


def _positive(name: str, value: float | int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder and expander."""

    backbone: str = "resnet18"
    """resnet18, resnet34, resnet50, small_cnn, timm:<name> (with timm installed); resnet1d (signals), mlp
    (tables)."""
    expander: str = "8192-8192-8192"
    """Widths of the expander's layers (the paper: 8192-8192-8192)."""
    small_images: bool = True
    """3x3 stride-1 stem without max-pool (for 32-96 px images)."""
    width: int = 32
    """Base width of small_cnn and resnet1d, hidden width of mlp (ignored by other backbones)."""
    depth: int = 3
    """Layers of mlp (ignored by other backbones)."""
    backbone_b: str = ""
    """A second, separate encoder for branch B (same names as backbone); empty: branch B shares the encoder.
    Needed when the two branches see different modalities (--modality-b)."""
    width_b: int = 0
    """width of backbone_b (0: the same as width)."""
    init: str = ""
    """Starting weights of the backbone (empty: random): a .safetensors/.pt backbone state dict (vicreg export, or
    a torchvision/timm one), an exported folder, torchvision:<WeightsName> (e.g.
    torchvision:ResNet50_Weights.IMAGENET1K_V2, from the torch hub cache; --download fetches it) or timm (timm's
    pretrained weights of a timm:<name> backbone, from its cache). Applied once, when a run starts."""
    expander_b: str = ""
    """Widths of branch B's own expander (empty: a separate expander of the same widths when backbone_b is
    set, else shared). Must end at the same width as expander."""

    def __post_init__(self) -> None:
        parse_expander_spec(self.expander)  # raises a clear ValueError on a bad spec
        if not self.backbone:
            raise ValueError("model.backbone is empty")
        _positive("model.width", self.width)
        _positive("model.depth", self.depth)
        if self.width_b < 0:
            raise ValueError(f"model.width_b must be >= 0, got {self.width_b}")
        if self.expander_b:
            widths_b = parse_expander_spec(self.expander_b)
            if widths_b[-1] != parse_expander_spec(self.expander)[-1]:
                raise ValueError(
                    f"model.expander_b {self.expander_b!r} must end at the same width as model.expander "
                    f"{self.expander!r} (the loss compares the two embeddings)"
                )


@dataclass(frozen=True)
class LossConfig:
    """Coefficients of the VICReg loss (paper: 25, 25, 1)."""

    sim_coeff: float = 25.0
    """Weight of the invariance term."""
    std_coeff: float = 25.0
    """Weight of the variance term."""
    cov_coeff: float = 1.0
    """Weight of the covariance term."""
    gamma: float = 1.0
    """Target standard deviation per dimension."""
    eps: float = 1e-4
    """Added to the variance under the square root."""
    gather: Gather = True
    """Variance and covariance under torchrun: True, the global batch gathered on every process (the official
    behaviour); sharded, the same values with each process computing only its share of the covariance (exact
    gradients; fewer FLOPs per process); False, per-process statistics."""

    multiview_weighting: Literal["mean", "vicregl"] = "mean"
    """With local crops (views.local_crops > 0): how the views' terms are combined (vicreg_multiview_loss); mean
    equals the paper's loss on a pair, vicregl is VICRegL's global loss (half the covariance weight on a pair)."""

    def __post_init__(self) -> None:
        for name in ("sim_coeff", "std_coeff", "cov_coeff", "gamma"):
            _non_negative(f"loss.{name}", getattr(self, name))
        _positive("loss.eps", self.eps)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: Literal["lars", "adamw", "sgd"] = "lars"
    """LARS as the paper, or AdamW / SGD."""
    base_lr: float = 0.2
    """Learning rate for a batch of 256; the peak rate is base_lr * batch_size / 256."""
    weight_decay: float = 1e-6
    """Weight decay (biases and norm parameters excluded)."""
    momentum: float = 0.9
    """Momentum of LARS and SGD."""
    warmup_epochs: float = 10.0
    """Linear warm-up length, in epochs (fractions allowed)."""
    final_lr_ratio: float = 0.001
    """The cosine ends at this fraction of the peak rate."""
    lars_eta: float = 0.001
    """LARS trust coefficient (official: 0.001; solo-learn: 0.02 with lars_clip)."""
    lars_clip: bool = False
    """LARC-style clipping of the layer rate at the global rate (solo-learn's setting; not the official one)."""

    def __post_init__(self) -> None:
        _positive("optim.base_lr", self.base_lr)
        _non_negative("optim.weight_decay", self.weight_decay)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        _non_negative("optim.warmup_epochs", self.warmup_epochs)
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"optim.final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        _positive("optim.lars_eta", self.lars_eta)


@dataclass(frozen=True)
class TrainConfig:
    """A VICReg pretraining run."""

    out: Path = Path("runs/vicreg")
    """Run folder: config, metrics, TensorBoard events, checkpoints and the exported backbone. Re-running
    with the same folder resumes from its last checkpoint."""
    epochs: int = 100
    """Passes over the training data."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (the schedule still spans --epochs unless fewer; with
    --budget-minutes it caps the budgeted total)."""
    budget_minutes: float | None = None
    """Train for this many minutes of wall-clock time: the step rate is measured over the first steps and the
    number of steps (the schedule's length) is fixed so that the run, monitors and checkpoints included, ends
    within the budget; --epochs is then ignored. The total is stored in the checkpoints, so a resumed run keeps
    it."""
    batch_size: int = 256
    """Global batch size (split evenly over processes under torchrun)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, mps, or auto (the local GPU when there is one, else the CPU)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the model (the loss is always float32); fp16 uses a gradient scaler (GPU)."""
    seed: int = 0
    """Seed of the model initialisation, data order and views."""
    log_every: int = 20
    """Steps between metric lines in metrics.jsonl and TensorBoard."""
    diag_every: int = 200
    """Steps between collapse diagnostics (std, correlation, effective rank) of the embeddings."""
    ckpt_every: int = 500
    """Steps between checkpoints (one is also written at the end and on SIGTERM/SIGINT)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in RUN/checkpoints: last.pt and the newest earlier ones (step_NNNNNNNN.pt); resuming
    skips a damaged newest one and uses the previous."""
    knn_every: int = 1
    """Epochs between online kNN evaluations on the held-out split (0: never)."""
    threads: int | None = None
    """CPU threads per process. Omitted: on a CPU device, the first steps are timed at 1, 2, 4, ... up to the
    cores (divided among torchrun's processes) and the fastest count is kept, measured again when the step time
    drifts; OMP_NUM_THREADS, when set outside torchrun, fixes it instead. A fixed count gives bit-identical
    reruns."""
    compile: bool = False
    """torch.compile the model."""
    channels_last: bool = False
    """channels_last memory format (faster convolutions on recent GPUs)."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm under torchrun."""
    progress: bool = True
    """Show progress on rank 0: a bar on a terminal, otherwise a plain line per log window on stdout."""
    data: str = "fashion-mnist"
    """A dataset name (fashion-mnist, mnist, cifar10, cifar100, stl10), a path (image folder, .npy/.npz), or a
    Hugging Face dataset: hf:<save_to_disk folder or cached name>[:<split>], hf-stream:... (streamed)."""
    data_root: Path | None = None
    """Folder that holds (or receives) named datasets; default: $VICREG_DATA, then the user cache."""
    download: bool = False
    """Download a named dataset (or --model.init weights) when it is not found locally (needs the network)."""
    data_column: str = ""
    """Hugging Face sources (hf:...): the image column (default: the one Image feature)."""
    label_column: str = ""
    """Hugging Face sources (hf:...): the label column (default: the ClassLabel feature, if any)."""
    image_size: int = 0
    """Size that images of a folder are decoded to before the views (0: the views' size)."""
    workers: int = 2
    """DataLoader worker processes for image folders (in-memory datasets need none)."""
    strict_data: bool = False
    """Stop on the first unreadable image instead of skipping it with a warning."""
    eval_split: str = "test"
    """Labelled split for the online kNN monitor, when the dataset has one ('' turns it off)."""
    modality: Literal["image", "signal", "table"] = "image"
    """What --data holds: images, signals (N, C, T) or table rows (N, F); signals and tables come from a .npz
    file (x, y, x_test, y_test), aeon:<Name> (a time-series set bundled with aeon) or sklearn:<name>."""
    modality_b: Literal["", "image", "signal", "table"] = ""
    """Two-modality pairs: branch B's modality; --data is then a .npz with x_a (of --modality) and x_b (of this
    one), row-aligned, and the model needs --model.backbone-b. Empty: both branches see views of one input."""
    views: ViewsConfig = field(default_factory=ViewsConfig)
    signal_views: SignalViewsConfig = field(default_factory=SignalViewsConfig)
    table_views: TableViewsConfig = field(default_factory=TableViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    label_free_every: int = 500
    """Steps between label-free measures of the representation (no labels needed): RankMe, LiDAR (4 augmented
    copies) and alpha-ReQ on --label-free-rows held-out rows, each also relative to the random-init encoder
    (``*_vs_init``); logged to metrics.jsonl and TensorBoard, plotted by vicreg report (0: never)."""
    label_free_rows: int = 1000
    """Held-out rows of those measures (the data's test split, else a seeded 20% of its rows; LiDAR uses 250)."""
    log: str = "tensorboard"
    """Experiment trackers, comma-separated: tensorboard, mlflow (a local store: $MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db; pip install 'vicreg[mlflow]'), wandb (offline, under the run folder; pip install
    'vicreg[wandb]')."""
    band_views: BandViewsConfig = field(default_factory=BandViewsConfig)
    """Multi-band or high-bit-depth images (a .npy/.npz of (N, C, H, W) with C not 1 or 3 or not uint8, a folder
    of such TIFFs, a folder of DICOMs): their views (recipe, size, crops, rotations, RGB bands), used instead of
    --views."""
    window: str = ""
    """DICOM folders: clip to the window CENTER,WIDTH in modality units (e.g. 40,400: CT soft tissue) or 'file'
    (each file's WindowCenter/WindowWidth); empty: the full range. Evaluation applies the same window."""
    band_percentiles: tuple[float, float] = (1.0, 99.0)
    """Multi-band data: the per-band percentiles (low, high) that bound the normalisation statistics and the
    range the views' brightness, contrast and noise act on."""
    resume_with_new_data: bool = False
    """Resume on data other than the checkpoint's (another file or folder with other rows): allowed and announced
    instead of refused. Without it a resume whose data fingerprint (rows, shape, dtype, sampled rows) differs
    stops with the differences."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or omitted), got {self.max_steps}")
        _positive("budget_minutes", self.budget_minutes, allow_none=True)
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be at least 2 (the variance term needs 2 samples per batch), got {self.batch_size}"
            )
        if not 0 <= self.seed < 2**32:  # view seeds are derived from it and must fit in 64 bits
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        for name in ("log_every", "diag_every", "ckpt_every"):
            _positive(name, getattr(self, name))
        if not self.data:
            raise ValueError("data is empty: give a dataset name or a path, e.g. --data fashion-mnist")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or omitted: chosen by measurement), got {self.threads}")
        if self.image_size < 0:
            raise ValueError(f"image_size must be >= 0, got {self.image_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.knn_every < 0:
            raise ValueError(f"knn_every must be >= 0, got {self.knn_every}")
        if self.label_free_every < 0:
            raise ValueError(f"label_free_every must be >= 0 (0: never), got {self.label_free_every}")
        if self.label_free_rows < 2:
            raise ValueError(f"label_free_rows must be >= 2, got {self.label_free_rows}")
        parse_backends(self.log)
        lo_p, hi_p = self.band_percentiles
        if not 0 <= lo_p < hi_p <= 100:
            raise ValueError(f"band_percentiles must be (low, high) with 0 <= low < high <= 100, got {lo_p}, {hi_p}")
        if self.modality_b and not self.model.backbone_b:
            raise ValueError(
                f"two modalities ({self.modality} and {self.modality_b}) need two encoders: set --model.backbone-b "
                "(e.g. mlp for a table, resnet1d for a signal, small_cnn for images)"
            )


# ------------------------------------------------------------------------------------------------ presets

PRESETS: dict[str, TrainConfig] = {
    # Sized for 2 CPU cores and ~10 minutes: a small CNN on 28 px grayscale Fashion-MNIST.
    "fashion-mnist-cpu": TrainConfig(
        out=Path("runs/fashion-mnist-cpu"),
        epochs=10,
        batch_size=256,
        device="cpu",
        precision="bf16",
        channels_last=True,
        data="fashion-mnist",
        views=ViewsConfig(size=28, crop_scale_min=0.2),
        model=ModelConfig(backbone="small_cnn", expander="1024-1024-1024", width=32),
        optim=OptimConfig(name="lars", base_lr=4.0, weight_decay=1e-4, warmup_epochs=1.0),
    ),
    # solo-learn's CIFAR-10 VICReg recipe (scripts/pretrain/cifar/vicreg.yaml; 92.07% top-1 after 1000 epochs):
    # ResNet-18 with the CIFAR stem, 2048-2048-2048, batch 256, LARS lr 0.3 with eta 0.02 and LARC clipping,
    # weight decay 1e-4, 10 warm-up epochs, one symmetric pipeline (crop 0.2-1, no blur, solarize 0.1).
    "cifar10-resnet18": TrainConfig(
        out=Path("runs/cifar10-resnet18"),
        epochs=1000,
        batch_size=256,
        precision="bf16",
        data="cifar10",
        download=True,
        workers=4,
        views=ViewsConfig(
            size=32, crop_scale_min=0.2, symmetric=True, symmetric_blur_prob=0.0, symmetric_solarize_prob=0.1
        ),
        model=ModelConfig(backbone="resnet18", expander="2048-2048-2048", small_images=True),
        optim=OptimConfig(
            name="lars", base_lr=0.3, weight_decay=1e-4, warmup_epochs=10.0, lars_eta=0.02, lars_clip=True
        ),
        channels_last=True,
    ),
    # The paper: ResNet-50, 8192-8192-8192, batch 2048, base lr 0.2, 1000 epochs, 10 warm-up epochs.
    "imagenet-resnet50": TrainConfig(
        out=Path("runs/imagenet-resnet50"),
        epochs=1000,
        batch_size=2048,
        precision="bf16",
        data="imagenet/train",
        workers=10,
        image_size=256,
        eval_split="",
        views=ViewsConfig(size=224, normalize="imagenet"),
        model=ModelConfig(backbone="resnet50", expander="8192-8192-8192", small_images=False),
        optim=OptimConfig(name="lars", base_lr=0.2, weight_decay=1e-6, warmup_epochs=10.0),
        channels_last=True,
        sync_bn=False,
    ),
    # Signals: ResNet1d on GunPoint (50 training series of 150 steps, bundled with aeon), a couple of CPU minutes.
    "gunpoint-resnet1d": TrainConfig(
        out=Path("runs/gunpoint-resnet1d"),
        modality="signal",
        data="aeon:GunPoint",
        epochs=100,
        batch_size=25,
        device="cpu",
        knn_every=25,
        signal_views=SignalViewsConfig(crop_scale_min=0.8),
        model=ModelConfig(backbone="resnet1d", expander="512-512-512", width=16),
        optim=OptimConfig(name="adamw", base_lr=0.01, weight_decay=1e-4, warmup_epochs=10.0),
    ),
    # Tables: an MLP on scikit-learn's wine (133 training rows, 13 features), SCARF corruption; seconds on a CPU.
    "wine-mlp": TrainConfig(
        out=Path("runs/wine-mlp"),
        modality="table",
        data="sklearn:wine",
        epochs=300,
        batch_size=64,
        device="cpu",
        knn_every=50,
        table_views=TableViewsConfig(corrupt_rate=0.6),
        model=ModelConfig(backbone="mlp", expander="512-512-512", width=128, depth=3),
        optim=OptimConfig(name="adamw", base_lr=0.01, weight_decay=1e-4, warmup_epochs=10.0),
    ),
    # Tables: the same recipe on breast_cancer (426 training rows, 30 features).
    "breast-cancer-mlp": TrainConfig(
        out=Path("runs/breast-cancer-mlp"),
        modality="table",
        data="sklearn:breast_cancer",
        epochs=100,
        batch_size=128,
        device="cpu",
        knn_every=25,
        table_views=TableViewsConfig(corrupt_rate=0.6),
        model=ModelConfig(backbone="mlp", expander="512-512-512", width=128, depth=3),
        optim=OptimConfig(name="adamw", base_lr=0.01, weight_decay=1e-4, warmup_epochs=10.0),
    ),
}


# ------------------------------------------------------------------------------------------------ files


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-friendly dict of a config (paths as strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


_YAML_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(path: str, hint: Any, value: Any) -> Any:
    """Check (and convert where lossless) a value read from a file against the field's declared type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        if value not in args:
            raise ValueError(f"config key {path!r} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):  # e.g. bool | Literal["sharded"]
        for member in args:
            try:
                return _coerce(path, member, value)
            except ValueError:
                continue
        allowed = ", ".join(
            ", ".join(map(repr, typing.get_args(a)))
            if typing.get_origin(a) is Literal
            else getattr(a, "__name__", str(a))
            for a in args
        )
        raise ValueError(f"config key {path!r} must be one of {allowed}, got {value!r}")
    if typing.get_origin(hint) is tuple and isinstance(value, list | tuple):  # YAML lists, stored tuples
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{path}[{i}]", args[0], v) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"config key {path!r} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{path}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _YAML_FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; it is the number users mean
    if hint is str and isinstance(value, str):
        return value
    if hint is Path and isinstance(value, str | Path):
        return Path(value)
    name = getattr(hint, "__name__", str(hint))
    raise ValueError(f"config key {path!r} must be of type {name}, got {value!r}")


def merge(cfg: Any, overrides: Mapping[str, Any], where: str = "") -> Any:
    """A copy of the dataclass ``cfg`` with the (nested) ``overrides`` applied and validated.

    Unknown keys, values of the wrong type and out-of-range values raise ``ValueError`` naming the key.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"merge expects a dataclass instance, got {type(cfg).__name__}")
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        path = f"{where}{name}"
        if name not in names:
            raise ValueError(f"unknown config key {path!r}; known keys here: {', '.join(sorted(names))}")
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {path!r} is a section and needs a mapping, got {value!r}")
            changes[name] = merge(current, value, f"{path}.")
        else:
            changes[name] = _coerce(path, hints[name], value)
    return dataclasses.replace(cfg, **changes)


def config_from_dict(data: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    return merge(base or TrainConfig(), data)


def load_config_file(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML (or JSON) file of overrides on top of ``base`` (a preset or the defaults)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return config_from_dict(data, base)
