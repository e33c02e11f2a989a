"""In-memory datasets: one tensor of rows plus optional ``int64`` labels, beside each other.

* :class:`ImageDataset`: images as one ``uint8`` tensor ``(N, C, H, W)``. Everything image-like that fits in
  memory (CIFAR, STL-10 at 96 px, MNIST, Fashion-MNIST, numpy arrays, small image folders) ends up as one.
* :class:`FloatDataset`: signals ``(N, C, T)`` or table rows ``(N, F)`` as one float32 tensor.

Both expose ``rows`` (the tensor), ``labels``, ``classes``, ``name``, ``channels`` (what an encoder's
``in_channels`` is), ``mean``/``std`` (per channel or feature: for images of the pixels scaled to ``[0, 1]``) and
``to``/``subset``; :class:`vicreg.data.InMemoryLoader` batches either by indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from numpy.lib.recfunctions import structured_to_unstructured
from torch import Tensor
from torchvision.transforms.v2.functional import center_crop, resize

from vicreg.deprecation import renamed

__all__ = [
    "Dataset",
    "FloatDataset",
    "ImageDataset",
    "Kind",
    "as_float_array",
    "as_labels",
    "as_uint8_images",
    "channel_stats",
    "resize_images",
]

Kind = Literal["signal", "table"]

# ITU-R 601-2 luma, the weights PIL uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ImageDataset:
    """Images held as one tensor.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)``, ``C`` is 1 (grey) or 3 (RGB), on any device.
        labels: ``int64`` tensor ``(N,)`` or ``None`` when unlabeled. In mixed splits (STL-10
            ``train+unlabeled``) unlabeled rows carry ``-1``.
        classes: class names, index ``i`` is label ``i`` (empty when unlabeled).
        name: where it came from (dataset name or path), for messages and run reports.
    """

    images: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] = ()
    name: str = "arrays"
    _stats: dict[str, tuple[float, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W) with C = 1 or 3, got {desc}; "
                "use ImageDataset.from_arrays to convert numpy arrays or other layouts"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{self.name}: the dataset has no images")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{self.name}: images of size {x.shape[2]}x{x.shape[3]} have no pixels")
        y = self.labels
        if y is not None and (y.dtype != torch.int64 or y.shape != (x.shape[0],)):
            raise ValueError(
                f"{self.name}: labels must be an int64 tensor of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
            )

    @classmethod
    def from_arrays(
        cls,
        images: Any,
        labels: Any = None,
        classes: Sequence[str] = (),
        name: str = "arrays",
    ) -> ImageDataset:
        """Build from numpy arrays or tensors; see :func:`as_uint8_images` for the accepted layouts."""
        x = as_uint8_images(images, name=name)
        y = None
        if labels is not None:
            y = torch.as_tensor(_numeric(np.asarray(labels), f"{name}: labels")).reshape(-1)
            if y.is_floating_point() and not bool((y == y.round()).all()):  # NaN fails here, inf below
                raise ValueError(f"{name}: labels must be integers, got non-integral {y.dtype} values")
            if y.numel() and not (float(y.min()) >= -1 and float(y.max()) < 2**31):
                raise ValueError(
                    f"{name}: labels must be class indices in [0, 2**31) (or -1 for unlabeled), got values in "
                    f"[{float(y.min()):g}, {float(y.max()):g}]"
                )
            y = y.to(torch.int64)
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"{name}: {x.shape[0]} images but {y.shape[0]} labels")
        return cls(x, y, tuple(classes), name)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def rows(self) -> Tensor:
        """The data tensor (``images``)."""
        return self.images

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.images.shape[2], self.images.shape[3]

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the pixels scaled to ``[0, 1]``, computed once from the data."""
        return self._channel_stats()[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the pixels scaled to ``[0, 1]``, computed once from the data."""
        return self._channel_stats()[1]

    def _channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if not self._stats:  # frozen dataclass: fill the cache dict in place
            mean, std = channel_stats(self.images)
            self._stats["mean"], self._stats["std"] = mean, std
        return self._stats["mean"], self._stats["std"]

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with its tensors on ``device`` (e.g. CIFAR on the GPU: batches cost no copy)."""
        labels = None if self.labels is None else self.labels.to(device)
        moved = replace(self, images=self.images.to(device), labels=labels)
        moved._stats.update(self._stats)
        return moved

    def with_channels(self, channels: int) -> ImageDataset:
        """Grey -> RGB by repeating the channel, RGB -> grey with the ITU-R 601 luma weights (PIL's)."""
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if channels == self.channels:
            return self
        x = self.images
        if channels == 3:
            out = x.expand(-1, 3, -1, -1).contiguous()
        else:
            w = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
            out = (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        return replace(self, images=out)

    def resized(self, size: int) -> ImageDataset:
        """The dataset at ``size x size`` (:func:`resize_images`); itself when already at that size."""
        if self.image_size == (size, size):
            return self
        return replace(self, images=resize_images(self.images, size))

    def subset(self, index: Tensor | Sequence[int]) -> ImageDataset:
        """The rows ``index`` (tensor or list of ints), e.g. a labelled fraction for a linear probe."""
        images, labels = _take_rows(self.images, self.labels, index)
        return replace(self, images=images, labels=labels)


def _take_rows(x: Tensor, labels: Tensor | None, index: Tensor | Sequence[int]) -> tuple[Tensor, Tensor | None]:
    idx = torch.as_tensor(index, dtype=torch.int64, device=x.device)
    return x[idx], None if labels is None else labels[idx.to(labels.device)]


def resize_images(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """``(N, C, H, W)`` images at ``size x size``: shorter side resized (bilinear, antialiased), then centre
    cropped, like the folder decoder; in chunks to bound memory. Images already at that size are returned."""
    if images.shape[-2:] == (size, size):
        return images
    return torch.cat([center_crop(resize(c, [size], antialias=True), [size, size]) for c in images.split(chunk)])


def as_uint8_images(images: Any, *, name: str = "arrays") -> Tensor:
    """Convert an image array to a contiguous ``uint8`` tensor ``(N, C, H, W)``.

    Accepted: ``(N, H, W)`` (grey), ``(N, H, W, C)`` (channels last, assumed whenever the last axis has 1 or 3
    entries) and ``(N, C, H, W)`` with ``C`` in ``{1, 3}``. Values: ``uint8`` as is; other integer types
    must lie in ``[0, 255]``; floats must lie in ``[0, 1]`` and are scaled by 255 and rounded.
    """
    x = torch.as_tensor(_numeric(np.asarray(images), f"{name}: images")) if not isinstance(images, Tensor) else images
    if x.is_complex():
        raise ValueError(f"{name}: images of dtype {x.dtype} are not supported; use uint8")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise ValueError(
            f"{name}: cannot read images of shape {tuple(x.shape)}; expected (N, H, W), (N, H, W, C) or "
            "(N, C, H, W) with C = 1 (grey) or 3 (RGB)"
        )
    if x.numel() == 0:
        raise ValueError(f"{name}: images of shape {tuple(x.shape)} hold no pixels (no images, or a size of 0)")
    if x.dtype == torch.uint8:
        pass
    elif x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"{name}: {bad} image value(s) are NaN or infinite; fix or drop those images (float images must "
                "lie in [0, 1])"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{name}: float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]; "
                "rescale them (or pass uint8 in [0, 255])"
            )
        x = (x.float() * 255).round_().to(torch.uint8)
    elif x.dtype != torch.bool:
        wide = x.to(torch.int64) if x.dtype in (torch.uint16, torch.uint32) else x  # no min/max kernels
        lo, hi = int(wide.min()), int(wide.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name}: integer images must lie in [0, 255], got values in [{lo}, {hi}]; rescale them to 8 bits "
                "first, or read them as 16-bit multi-band images (vicreg.data.bands.read_band_arrays)"
            )
        x = x.to(torch.uint8)
    else:
        raise ValueError(f"{name}: images of dtype {x.dtype} are not supported; use uint8")
    return x.contiguous()


def _numeric(a: np.ndarray, what: str) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_):
        raise ValueError(f"{what} must be numbers, got an array of dtype {a.dtype}")
    return a


def channel_stats(images: Tensor, chunk_elements: int = 1 << 24) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``uint8`` images, scaled to ``[0, 1]``.

    Exact: sums of values and of squares are accumulated in float64, a chunk of rows at a time, so memory
    stays bounded for large datasets.
    """
    n, c = images.shape[:2]
    per_row = images[0].numel()
    rows = max(1, chunk_elements // per_row)
    total = torch.zeros(c, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for chunk in images.split(rows):
        v = chunk.transpose(0, 1).reshape(c, -1).double()
        total += v.sum(1)
        total_sq += v.square().sum(1)
    count = n * per_row // c
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0)
    scale = 255.0
    return (
        tuple(float(m) / scale for m in mean.cpu()),
        tuple(float(s) / scale for s in var.sqrt().cpu()),
    )


# ------------------------------------------------------------------------------------------------ float data


def as_float_array(x: Any, kind: Kind, *, name: str = "arrays") -> Tensor:
    """A contiguous float32 tensor of signals ``(N, C, T)`` (``(N, T)`` is read as one channel) or table rows
    ``(N, F)``; NaN and infinite values are refused."""
    t = torch.as_tensor(_numeric_table(np.asarray(x), kind, name)) if not isinstance(x, Tensor) else x
    if kind == "signal" and t.ndim == 2:
        t = t[:, None, :]
    want = {"signal": 3, "table": 2}[kind]
    layout = {"signal": "(N, C, T) or (N, T)", "table": "(N, F)"}[kind]
    if t.ndim != want or t.shape[0] == 0 or min(t.shape[1:]) == 0:
        raise ValueError(f"{name}: {kind} data must be a non-empty array of shape {layout}, got {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: {kind} data must be numeric, got dtype {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: the {kind} data holds NaN or infinite values; impute or drop them first")
    return t.contiguous()


def _is_number(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"  # bool, signed, unsigned, float (complex and text are not numbers)


def _numeric_table(a: np.ndarray, kind: Kind, name: str) -> np.ndarray:
    """``a`` when it holds numbers; a structured array (``DataFrame.to_records()``) of number columns as one
    float array; otherwise one line naming the first column that is not numbers and one of its values."""
    if a.dtype.names:
        for column in a.dtype.names:
            if not _is_number(a.dtype[column]):
                raise ValueError(
                    f"{name}: column {column!r} of the {kind} data holds {a.dtype[column]} values, not numbers; "
                    "encode it as numbers (e.g. one-hot or category codes) or drop it before saving"
                )
        return structured_to_unstructured(a, dtype=np.float64)
    if _is_number(a.dtype):
        return a
    if a.dtype.kind in "US" and a.ndim == 2:
        for j in range(a.shape[1]):
            for i, value in enumerate(a[:, j].tolist()):
                try:
                    float(value)
                except ValueError:
                    raise ValueError(
                        f"{name}: column {j} of the {kind} data holds text ({value!r} in row {i}), not numbers; "
                        "encode it as numbers (e.g. one-hot or category codes) or drop it before saving"
                    ) from None
    raise ValueError(
        f"{name}: the {kind} data is stored as {a.dtype} values, not numbers; convert it to numbers before "
        "saving (e.g. x.astype(numpy.float32))"
    )


def as_labels(y: Any, n: int, name: str) -> Tensor | None:
    """``int64 (n,)`` labels from an array (``None`` stays ``None``); non-integral values are refused."""
    if y is None:
        return None
    t = torch.as_tensor(np.asarray(y)).reshape(-1)
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{name}: labels must be integers, got non-integral {t.dtype} values")
    if t.shape[0] != n:
        raise ValueError(f"{name}: {n} rows but {t.shape[0]} labels")
    return t.to(torch.int64)


@dataclass(frozen=True)
class FloatDataset:
    """Signals ``(N, C, T)`` or table rows ``(N, F)`` as one float32 tensor, with optional ``int64`` labels."""

    x: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] = ()
    name: str = "arrays"

    @classmethod
    def from_arrays(
        cls, x: Any, labels: Any = None, *, kind: Kind, classes: Sequence[str] = (), name: str = "arrays"
    ) -> FloatDataset:
        t = as_float_array(x, kind, name=name)
        return cls(t, as_labels(labels, t.shape[0], name), tuple(classes), name)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def rows(self) -> Tensor:
        """The data tensor (``x``)."""
        return self.x

    @property
    def kind(self) -> Kind:
        return "signal" if self.x.ndim == 3 else "table"

    @property
    def channels(self) -> int:
        """Signal channels, or table features (what the encoder's ``in_channels`` is)."""
        return self.x.shape[1]

    @property
    def mean(self) -> tuple[float, ...]:
        """Per channel (signals) or feature (tables) mean."""
        return tuple(float(v) for v in self._flat().mean(0))

    @property
    def std(self) -> tuple[float, ...]:
        """Per channel / feature population standard deviation; 1 where it is 0."""
        s = self._flat().std(0, unbiased=False)
        return tuple(float(v) if v > 0 else 1.0 for v in s)

    def _flat(self) -> Tensor:
        x = self.x.double()
        return x.transpose(1, 2).reshape(-1, x.shape[1]) if x.ndim == 3 else x

    def to(self, device: torch.device | str) -> FloatDataset:
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, x=self.x.to(device), labels=labels)

    def subset(self, index: Tensor | Sequence[int]) -> FloatDataset:
        x, labels = _take_rows(self.x, self.labels, index)
        return replace(self, x=x, labels=labels)


Dataset = ImageDataset | FloatDataset
"""Either in-memory dataset."""

if TYPE_CHECKING:  # the datasets were called ArrayDataset / FloatArrayDataset (one release)
    ArrayDataset = ImageDataset
    FloatArrayDataset = FloatDataset
else:
    __getattr__ = renamed(__name__, {"ArrayDataset": ImageDataset, "FloatArrayDataset": FloatDataset})
