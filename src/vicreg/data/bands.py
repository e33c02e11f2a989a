"""Multi-band and high-bit-depth images: readers, per-band statistics and the normalisation on the device.

Images with any number of bands ``C >= 1`` are held as one compact tensor ``(N, C, H, W)`` in the dtype they
were stored in: ``uint8``, ``uint16`` (12- and 16-bit sensors), ``int16`` (CT in Hounsfield units) or
``float32`` (reflectances, already-calibrated data). Nothing is scaled or clipped when reading: a 16-bit value
of 65535 stays 65535 until the batch is on the training device, where :func:`normalize_bands` turns it into
float32 (every ``uint16``/``int16`` value is exact in float32).

Readers (each returns a :class:`BandImages`):

* :func:`read_band_arrays`: a ``.npy`` / ``.npz`` file of shape ``(N, C, H, W)`` (or ``(N, H, W)``: one band);
* :func:`read_tiff_folder`: a folder of ``.tif`` / ``.tiff`` files (multi-page or multi-sample), via
  ``tifffile``; see the function for the axis rule;
* :func:`read_dicom_folder`: a folder of DICOM files, via ``pydicom``, rescaled to modality units
  (``RescaleSlope``/``RescaleIntercept``), full range kept, windowed only when asked.

A folder whose files sit in sub-folders is labelled by sub-folder (sorted names, as ``torchvision``'s
``ImageFolder``); files directly in the folder are unlabeled.

Units and statistics. :func:`to_unit` is the one convention for what "the values" of an image are: ``uint8``
is scaled to ``[0, 1]`` (as :class:`~vicreg.data.ArrayDataset` and :func:`vicreg.probes.normalize_rows` do),
every other dtype keeps its own values. :func:`band_stats` computes, per band and in those units, the
``low``/``high`` percentiles (1st and 99th by default) and the ``mean``/``std`` of the values clipped to
``[low, high]``: a few saturated pixels at 65535 or no-data zeros then neither shift the mean nor inflate the
standard deviation. The normalisation itself, ``(to_unit(x) - mean) / std``, does not clip, so it is the affine
map that :class:`vicreg.models.EncoderSpec` (``mean``/``std``) already describes and that
:func:`vicreg.probes.normalize_rows` applies at evaluation: eval, embed and export see exactly what training saw.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from vicreg.data.arrays import resize_images
from vicreg.data.numpy_files import check_numpy_file
from vicreg.data.readers import file_content

__all__ = [
    "BAND_DTYPES",
    "DICOM_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "BandFormat",
    "BandImages",
    "BandStats",
    "as_band_images",
    "band_format",
    "band_source_has_test",
    "band_stats",
    "normalize_bands",
    "parse_window",
    "read_band_arrays",
    "read_bands",
    "read_dicom_folder",
    "read_tiff_folder",
    "to_display",
    "to_unit",
]

BAND_DTYPES = (torch.uint8, torch.uint16, torch.int16, torch.float32)
"""The dtypes a :class:`BandImages` holds its pixels in (each converts to float32 without loss)."""
TIFF_EXTENSIONS = (".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
"""DICOM files are recognised by these suffixes, or by the ``DICM`` marker when they have no suffix."""

_EXTRA = "pip install 'vicreg[multiband]'"
_INTEGER_TARGETS = ((torch.uint8, 0, 255), (torch.uint16, 0, 65535), (torch.int16, -32768, 32767))


# ------------------------------------------------------------------------------------------------- container


@dataclass(frozen=True)
class BandImages:
    """Images with ``C >= 1`` bands held as one compact tensor.

    Attributes:
        images: ``(N, C, H, W)`` in one of :data:`BAND_DTYPES`, on any device.
        labels: ``int64 (N,)`` or ``None`` (unlabeled).
        classes: class names, index ``i`` is label ``i``.
        name: where it came from, for messages.

    Batch it with ``vicreg.data.InMemoryLoader(data.images, batch_size, labels=data.labels)``: rows are copied
    in their own dtype, so a ``uint16`` batch crosses to the GPU at 2 bytes per value.
    """

    images: Tensor
    labels: Tensor | None = None
    classes: tuple[str, ...] = ()
    name: str = "bands"

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, Tensor) or x.ndim != 4 or x.dtype not in BAND_DTYPES:
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}: images must be a (N, C, H, W) tensor of uint8, uint16, int16 or float32, got {desc}; "
                "use as_band_images to convert arrays"
            )
        if min(x.shape) == 0:
            raise ValueError(f"{self.name}: images of shape {tuple(x.shape)} hold no pixels")
        y = self.labels
        if y is not None and (y.dtype != torch.int64 or y.shape != (x.shape[0],)):
            raise ValueError(
                f"{self.name}: labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def rows(self) -> Tensor:
        return self.images

    @property
    def channels(self) -> int:
        """Number of bands (the encoder's ``in_channels``)."""
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    def stats(self, percentiles: tuple[float, float] = (1.0, 99.0)) -> BandStats:
        """:func:`band_stats` of the images."""
        return band_stats(self.images, percentiles=percentiles)

    def to(self, device: torch.device | str) -> BandImages:
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, images=self.images.to(device), labels=labels)

    def subset(self, index: Tensor | Sequence[int]) -> BandImages:
        idx = torch.as_tensor(index, dtype=torch.int64)
        labels = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        return replace(self, images=self.images[idx.to(self.images.device)], labels=labels)

    def select_bands(self, bands: Sequence[int]) -> BandImages:
        """Only the bands ``bands``, in that order (e.g. ``(3, 2, 1)``: Sentinel-2's B4/B3/B2 as RGB)."""
        _check_band_indices(bands, self.channels, "bands")
        return replace(self, images=self.images[:, list(bands)].contiguous())

    def resized(self, size: int) -> BandImages:
        """At ``size x size`` (shorter side resized, antialiased, then centre crop), dtype kept (integers
        rounded and clamped to their dtype's range)."""
        if self.image_size == (size, size):
            return self
        return replace(self, images=_resize_keep_dtype(self.images, size))


def _check_band_indices(bands: Sequence[int], channels: int, what: str) -> None:
    if not bands or any(not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < channels for b in bands):
        raise ValueError(f"{what} must be band indices in [0, {channels}), got {tuple(bands)!r}")


def _resize_keep_dtype(images: Tensor, size: int, chunk: int = 1024) -> Tensor:
    out = []
    for c in images.split(chunk):
        r = resize_images(c.float(), size)
        if c.dtype != torch.float32:
            lo, hi = next((lo, hi) for d, lo, hi in _INTEGER_TARGETS if d == c.dtype)
            r = r.round_().clamp_(lo, hi)
        out.append(r.to(c.dtype))
    return torch.cat(out)


def as_band_images(images: Any, *, name: str = "arrays") -> Tensor:
    """A contiguous ``(N, C, H, W)`` tensor in the smallest of :data:`BAND_DTYPES` that holds ``images`` exactly.

    Layout: 4-D arrays are channels first, ``(N, C, H, W)`` (no guess from the shape: 13 bands of 13 pixels
    would be ambiguous); 3-D arrays are ``(N, H, W)``, one band. Dtypes: ``uint8``, ``uint16``, ``int16`` and
    ``float32`` are kept; other integers become the first of ``uint8``/``uint16``/``int16`` that holds their
    range, or are refused; ``float16``/``float64`` become ``float32``. NaN or infinite values are refused.
    """
    a = images if isinstance(images, Tensor) else torch.as_tensor(_numeric(np.asarray(images), name))
    if a.ndim == 3:
        a = a.unsqueeze(1)
    if a.ndim != 4 or min(a.shape) == 0:
        raise ValueError(
            f"{name}: expected multi-band images of shape (N, C, H, W) (or (N, H, W) for one band), got "
            f"{tuple(a.shape)}; move the band axis to position 1 first (e.g. numpy.moveaxis(x, -1, 1))"
        )
    if a.dtype == torch.bool or a.is_complex():
        raise ValueError(f"{name}: images of dtype {a.dtype} are not supported; use uint8, uint16, int16 or float32")
    if a.dtype in BAND_DTYPES:
        pass
    elif a.is_floating_point():
        a = a.to(torch.float32)
    else:
        a = a.to(_smallest_integer_dtype(a, name))
    if a.dtype == torch.float32 and not bool(torch.isfinite(a).all()):
        bad = int((~torch.isfinite(a)).sum())
        raise ValueError(f"{name}: {bad} value(s) are NaN or infinite; fill or drop them (e.g. numpy.nan_to_num)")
    return a.contiguous()


def _smallest_integer_dtype(a: Tensor, name: str) -> torch.dtype:
    wide = a.to(torch.int64) if a.dtype in (torch.uint16, torch.uint32, torch.uint64) else a  # no min/max kernels
    lo, hi = int(wide.min()), int(wide.max())
    for dtype, d_lo, d_hi in _INTEGER_TARGETS:
        if d_lo <= lo and hi <= d_hi:
            return dtype
    raise ValueError(
        f"{name}: integer values in [{lo}, {hi}] fit neither uint16 nor int16; convert the images to float32 "
        "(they are then used as they are) or rescale them"
    )


def _numeric(a: np.ndarray, name: str) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_):
        raise ValueError(f"{name}: images must be numbers, got an array of dtype {a.dtype}")
    if a.dtype.byteorder == ">":  # torch reads native byte order only (big-endian TIFFs, FITS)
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _labels(y: Any, n: int, name: str) -> Tensor | None:
    if y is None:
        return None
    t = torch.as_tensor(np.asarray(y)).reshape(-1)
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"{name}: labels must be integers, got non-integral {t.dtype} values")
    if t.shape[0] != n:
        raise ValueError(f"{name}: {n} images but {t.shape[0]} labels")
    return t.to(torch.int64)


# ------------------------------------------------------------------------------------------------- readers


def read_band_arrays(path: str | os.PathLike[str], *, split: str = "train") -> BandImages:
    """Multi-band images from a ``.npy`` (the images alone) or ``.npz`` file.

    In a ``.npz`` the images are under ``images``/``x``/``data`` (``images_test``/``x_test`` for
    ``split="test"``) and the optional labels under ``labels``/``y``/``targets`` (``..._test``). Shapes and
    dtypes: :func:`as_band_images`; ``uint16`` stays ``uint16``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no array file at {path}: give a .npy or .npz file of (N, C, H, W) images")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    check_numpy_file(path)  # cut short, impossible sizes, damaged archives: one line, before any allocation
    try:
        content = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable .npy/.npz file (it holds {file_content(path)}); write it with "
            "numpy.save(path, images) or numpy.savez(path, images=..., labels=...)"
        ) from e
    if isinstance(content, np.ndarray):
        if split != "train":
            raise ValueError(f"{path}: a .npy file holds one split; give the test images as their own file")
        return BandImages(as_band_images(content, name=str(path)), name=str(path))
    suffix = "" if split == "train" else "_test"
    with content:
        keys = list(content.files)
        image_key = next((k + suffix for k in ("images", "x", "data", "X") if k + suffix in keys), None)
        if image_key is None and split == "train" and len(keys) == 1:
            image_key = keys[0]
        if image_key is None:
            want = "images" + suffix
            raise ValueError(f"{path}: no images for split {split!r} among the keys {keys}; name them {want!r}")
        label_key = next((k + suffix for k in ("labels", "y", "targets", "Y") if k + suffix in keys), None)
        images = as_band_images(content[image_key], name=f"{path}:{image_key}")
        labels = _labels(content[label_key], images.shape[0], str(path)) if label_key else None
    return BandImages(images, labels, _class_names(labels), f"{path}:{split}")


def _class_names(labels: Tensor | None) -> tuple[str, ...]:
    if labels is None or labels.numel() == 0 or int(labels.max()) < 0:
        return ()
    return tuple(str(i) for i in range(int(labels.max()) + 1))


def _scan(folder: Path, matches: Any) -> tuple[list[Path], list[int] | None, tuple[str, ...]]:
    """Files of ``folder`` for which ``matches(path)``: by class sub-folder (labelled) or directly (unlabeled)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if classes:
        paths, labels = [], []
        for i, cls in enumerate(classes):
            found = sorted(p for p in (folder / cls).rglob("*") if p.is_file() and matches(p))
            paths += found
            labels += [i] * len(found)
        return paths, labels, classes
    return sorted(p for p in folder.iterdir() if p.is_file() and matches(p)), None, ()


def _stack(arrays: list[np.ndarray], paths: list[Path], folder: Path, size: int | None) -> Tensor:
    """One ``(N, C, H, W)`` tensor of the per-file ``(C, H, W)`` arrays (resized to ``size`` when given)."""
    first = arrays[0]
    for a, p in zip(arrays, paths, strict=True):
        if a.dtype != first.dtype:
            raise ValueError(
                f"{folder}: {paths[0].name} holds {first.dtype} values but {p.name} holds {a.dtype}; convert the "
                "files to one bit depth (mixing them would put values of different scales side by side)"
            )
        if a.shape[0] != first.shape[0]:
            raise ValueError(f"{folder}: {paths[0].name} has {first.shape[0]} bands but {p.name} has {a.shape[0]}")
        if size is None and a.shape != first.shape:
            raise ValueError(
                f"{folder}: {paths[0].name} is {first.shape[1]}x{first.shape[2]} px but {p.name} is "
                f"{a.shape[1]}x{a.shape[2]}; pass size= to resize every image"
            )
    if size is None:
        return as_band_images(np.stack(arrays), name=str(folder))
    return torch.cat([_resize_keep_dtype(as_band_images(a[None], name=str(folder)), size) for a in arrays])


def _tiff_bands(path: Path, tifffile: Any) -> np.ndarray:
    """The image of one TIFF file as ``(C, H, W)`` by its axes (see :func:`read_tiff_folder`)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes
        a = series.asarray()
    keep = [i for i, ax in enumerate(axes) if a.shape[i] != 1 or ax in "YX"]
    axes = "".join(axes[i] for i in keep)
    a = a.reshape([a.shape[i] for i in keep])
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3 and axes[-2:] == "YX":
        return a
    if a.ndim == 3 and axes[-1] == "S":  # interleaved samples: (H, W, C)
        return np.moveaxis(a, -1, 0)
    raise ValueError(
        f"{path}: cannot read a TIFF image with axes {axes!r} and shape {a.shape} as (bands, height, width); "
        "save each image as its own file of pages or samples, e.g. tifffile.imwrite(path, x) with x of shape (C, H, W)"
    )


def read_tiff_folder(folder: str | os.PathLike[str], *, size: int | None = None) -> BandImages:
    """Multi-band images from a folder of ``.tif`` / ``.tiff`` files (needs ``tifffile``).

    The axis rule, read from the file's own structure (``tifffile``'s series axes), never guessed from the
    shape: the axes ``Y`` and ``X`` are height and width; an image with interleaved samples (axes ending in
    ``S``, the layout of RGB and most GeoTIFF rasters, ``(H, W, C)``) has its bands last; an image of pages or
    planar samples (``(C, H, W)``: ``tifffile.imwrite(path, x)`` with ``x`` of shape ``(C, H, W)``, multi-page
    microscopy stacks) has them first; one page without samples is one band. Axes of length 1 are dropped.
    Any other layout (e.g. pages of multi-sample images, time series) is refused with a message.

    Every file must have the same number of bands and the same dtype; with ``size`` they are resized to
    ``size x size`` (shorter side, antialiased, centre crop; dtype kept), without it they must all have one size.
    """
    try:
        import tifffile
    except ImportError as err:
        raise ImportError(f"reading TIFF folders needs tifffile: {_EXTRA}") from err
    folder = Path(folder).expanduser()
    paths, labels, classes = _scan(folder, lambda p: p.suffix.lower() in TIFF_EXTENSIONS)
    if not paths:
        raise ValueError(f"{folder}: no .tif/.tiff files (directly, or in one sub-folder per class)")
    arrays = []
    for p in paths:
        try:
            arrays.append(_numeric(_tiff_bands(p, tifffile), str(p)))
        except (OSError, tifffile.TiffFileError) as err:
            raise ValueError(f"{p} is not a readable TIFF file ({type(err).__name__}: {err})") from err
    images = _stack(arrays, paths, folder, size)
    y = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return BandImages(images, y, classes, str(folder))


Window = tuple[float, float] | Literal["file"] | None


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    if path.suffix:
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _dicom_frames(path: Path, pydicom: Any, window: Window) -> np.ndarray:
    """The frames of one DICOM file ``(F, C, H, W)`` in modality units (float64), windowed if asked."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types (InvalidDicomError, missing decoders, bad lengths)
        raise ValueError(
            f"{path}: cannot read its DICOM pixels ({type(err).__name__}: {err}); compressed transfer syntaxes "
            "need a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg)"
        ) from err
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    a = np.asarray(pixels)
    a = a.reshape(frames, *a.shape[-3:]) if samples > 1 else a.reshape(frames, 1, *a.shape[-2:])
    if samples > 1:
        a = np.moveaxis(a, -1, 1)  # (F, H, W, S) -> (F, S, H, W)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = a.astype(np.float64) * slope + intercept
    if window is None:
        return values
    if window == "file":
        if "WindowCenter" not in ds or "WindowWidth" not in ds:
            raise ValueError(
                f"{path}: window='file' but the file has no WindowCenter/WindowWidth; give (center, width)"
            )
        center, width = (float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth)))
    else:
        center, width = float(window[0]), float(window[1])
    if not width > 0:
        raise ValueError(f"{path}: the window width must be > 0, got {width}")
    return np.clip(values, center - width / 2, center + width / 2)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value


def read_dicom_folder(folder: str | os.PathLike[str], *, window: Window = None, size: int | None = None) -> BandImages:
    """Images from a folder of DICOM files (needs ``pydicom``), in modality units with their full range.

    Each file's stored values go through ``RescaleSlope`` and ``RescaleIntercept`` (CT: Hounsfield units);
    nothing is clipped unless ``window`` is given: ``(center, width)`` in those units, or ``"file"`` for the
    file's first ``WindowCenter``/``WindowWidth``; values are then clipped to ``[center - width / 2,
    center + width / 2]`` (not mapped to 8 bits: the statistics make them unit-free later). Frames of a
    multi-frame file become separate images (same label); ``SamplesPerPixel`` are the bands.

    The dtype is the smallest exact one for the whole folder: ``uint16`` when every value is an integer in
    ``[0, 65535]``, ``int16`` for integers in ``[-32768, 32767]``, else ``float32``. Modality LUT sequences are
    not applied (rescale slope/intercept are what CT, MR, CR and DX files use), and ``MONOCHROME1`` images
    (white = 0) are not inverted: the values are the modality's, not the display's.
    """
    try:
        import pydicom
    except ImportError as err:
        raise ImportError(f"reading DICOM folders needs pydicom: {_EXTRA}") from err
    if window is not None and window != "file" and not (isinstance(window, Sequence) and len(window) == 2):
        raise ValueError(f"window must be (center, width), 'file' or None, got {window!r}")
    folder = Path(folder).expanduser()
    paths, labels, classes = _scan(folder, _is_dicom)
    if not paths:
        raise ValueError(f"{folder}: no DICOM files (.dcm, or files with the DICM marker) directly or per class")
    per_file = [_dicom_frames(p, pydicom, window) for p in paths]
    lo = min(float(f.min()) for f in per_file)
    hi = max(float(f.max()) for f in per_file)
    integral = all(bool(np.all(f == np.round(f))) for f in per_file)
    dtype: type[np.number[Any]] = np.float32
    if integral:
        dtype = np.uint16 if lo >= 0 and hi <= 65535 else np.int16 if lo >= -32768 and hi <= 32767 else np.float32
    frames = [f.astype(dtype) for f in per_file]
    arrays = [frame for f in frames for frame in f]
    frame_paths = [p for p, f in zip(paths, frames, strict=True) for _ in range(f.shape[0])]
    images = _stack(arrays, frame_paths, folder, size)
    y = None
    if labels is not None:
        y = torch.tensor([lab for lab, f in zip(labels, frames, strict=True) for _ in range(f.shape[0])])
    return BandImages(images, y, classes, str(folder))


# ------------------------------------------------------------------------------------------------- statistics


class BandStats(NamedTuple):
    """Per-band statistics in the units of :func:`to_unit` (``[0, 1]`` for ``uint8``, raw values otherwise).

    ``mean``/``std`` go into :class:`vicreg.models.EncoderSpec` (its ``mean``/``std``) and normalise at
    training and evaluation alike; ``low``/``high`` (the percentiles) set the range the photometric views work
    on (:class:`vicreg.augment.bands.BandViews`).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self._asdict().items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> BandStats:
        return cls(*(tuple(float(v) for v in d[k]) for k in cls._fields))


def to_unit(x: Tensor) -> Tensor:
    """float32 values of a batch: ``uint8`` scaled to ``[0, 1]``, every other dtype as it is (exact for
    ``uint16``/``int16``: float32 holds every integer up to 2**24). A float32 ``x`` is returned itself."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32)


def band_stats(
    images: Tensor,
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    max_samples: int = 1 << 20,
    chunk_elements: int = 1 << 24,
) -> BandStats:
    """Per-band ``low``/``high`` percentiles and the ``mean``/``std`` of the values clipped to them.

    A pure function of the images (deterministic). The percentiles come from at most ``max_samples`` values
    per band at evenly spaced positions of the flattened band (all values when there are fewer); the mean and
    the population standard deviation of the clipped values are then exact over all pixels (float64 sums, a
    chunk of rows at a time). ``percentiles=(0, 100)`` clips nothing (plain mean/std). A band whose clipped
    standard deviation is 0 (constant) gets ``std = 1`` so that normalising is defined.
    """
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if images.ndim != 4 or images.dtype not in BAND_DTYPES:
        raise ValueError(
            f"band_stats needs (N, C, H, W) images of {BAND_DTYPES}, got {images.dtype} {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    per_band = n * h * w
    # Evenly spaced pixel positions over (image, pixel), gathered without copying the dataset: (S, C).
    pos = torch.arange(0, per_band, max(1, -(-per_band // max_samples)), device=images.device)
    sample = to_unit(images.reshape(n, c, h * w)[pos // (h * w), :, pos % (h * w)]).double()
    q = torch.tensor([lo_p / 100, hi_p / 100], dtype=torch.float64, device=sample.device)
    low, high = torch.stack([torch.quantile(sample[:, i], q) for i in range(c)], dim=1)  # per band: size limit
    rows = max(1, chunk_elements // images[0].numel())
    total = torch.zeros(c, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    lo_v, hi_v = low.view(1, c, 1, 1).to(images.device), high.view(1, c, 1, 1).to(images.device)
    for chunk in images.split(rows):
        v = torch.minimum(torch.maximum(to_unit(chunk).double(), lo_v), hi_v)
        total += v.sum((0, 2, 3))
        total_sq += v.square().sum((0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return BandStats(*(tuple(float(v) for v in t.cpu()) for t in (mean, std, low, high)))


def normalize_bands(
    x: Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device | str | None = None
) -> Tensor:
    """``(to_unit(x) - mean) / std`` per band as float32 on ``device`` (default: ``x``'s); no clipping.

    The compact batch moves first (2 bytes per value for ``uint16``), then converts: the same map as
    :func:`vicreg.probes.normalize_rows`, for any of :data:`BAND_DTYPES`.
    """
    c = x.shape[1]
    if len(mean) not in (1, c) or len(std) not in (1, c) or min(std) <= 0:
        raise ValueError(f"mean/std need 1 or {c} values each and std > 0, got {len(mean)} and {len(std)}")
    device = x.device if device is None else torch.device(device)
    x = to_unit(x.to(device, non_blocking=True))
    shape = (1, c) + (1,) * (x.ndim - 2)
    m = torch.tensor(mean, dtype=torch.float32, device=device).expand(c).reshape(shape)
    s = torch.tensor(std, dtype=torch.float32, device=device).expand(c).reshape(shape)
    return (x - m) / s  # not in place: a float32 x is returned by to_unit as it is


# ------------------------------------------------------------------------------------------------- sources


BandFormat = Literal["arrays", "tiff", "dicom"]


def _array_is_bands(shape: tuple[int, ...], dtype: np.dtype[Any], value_range: Any) -> bool:
    """Whether an image array is multi-band / high-bit-depth rather than 8-bit grey or RGB (see
    :func:`band_format`); ``value_range()`` gives ``(min, max)`` for float arrays, read only when needed."""
    if len(shape) == 4 and shape[1] not in (1, 3) and shape[-1] not in (1, 3):
        return True  # channels first, C not 1 or 3
    if np.issubdtype(dtype, np.integer):
        return dtype != np.uint8
    if np.issubdtype(dtype, np.floating):
        lo, hi = value_range()
        return not (lo >= 0 and hi <= 1)  # floats in [0, 1] are 8-bit images scaled (the ImageDataset rule)
    return False


def _first_file(folder: Path, matches: Any, look: int = 64) -> Path | None:
    """The first matching file among the first ``look`` files of ``folder`` and of its first sub-folder (a
    cheap look: a large image folder is not walked)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    subs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file()][:look]
    if subs:
        files += sorted(p for p in subs[0].iterdir() if p.is_file() and not p.name.startswith("."))[:look]
    return next((p for p in files if matches(p)), None)


def band_format(source: str | os.PathLike[str]) -> BandFormat | None:
    """How :func:`read_bands` reads ``source``, or ``None`` when it is not multi-band / high-bit-depth data.

    * a ``.npy``/``.npz`` file whose images are not 8-bit grey or RGB: ``(N, C, H, W)`` with ``C`` not 1 or 3,
      any integer dtype but ``uint8``, or floats outside ``[0, 1]`` -> ``"arrays"``;
    * a folder whose first file (directly, or in the first class sub-folder) is a DICOM file -> ``"dicom"``;
    * a folder whose first file is a TIFF that is not 8-bit grey or RGB (read from its header with
      ``tifffile``; without it, TIFF folders stay 8-bit image folders) -> ``"tiff"``.

    8-bit grey and RGB data keep the image path (:class:`~vicreg.data.ImageDataset` and its views).
    """
    path = Path(os.fspath(source)).expanduser()
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        try:
            content = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return None  # the image path's reader says what is wrong
        if isinstance(content, np.ndarray):
            a = content
            return "arrays" if _array_is_bands(a.shape, a.dtype, lambda: (float(a.min()), float(a.max()))) else None
        with content:
            key = next((k for k in ("images", "x", "data", "X") if k in content.files), None)
            if key is None and len(content.files) == 1:
                key = content.files[0]
            if key is None:
                return None
            try:
                a = content[key]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError):
                return None  # a damaged archive: the image path's reader says what is wrong
        return "arrays" if _array_is_bands(a.shape, a.dtype, lambda: (float(a.min()), float(a.max()))) else None
    if not path.is_dir():
        return None
    first = _first_file(path, lambda p: _is_dicom(p) or p.suffix.lower() in TIFF_EXTENSIONS)
    if first is None:
        return None
    if first.suffix.lower() not in TIFF_EXTENSIONS:
        return "dicom"
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(first) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), np.dtype(series.dtype), series.axes
    except (OSError, tifffile.TiffFileError):
        return None
    bands = next((n for ax, n in zip(axes, shape, strict=True) if ax not in "YX" and n > 1), 1)
    return None if dtype == np.uint8 and bands in (1, 3) else "tiff"


def parse_window(text: str) -> Window:
    """A DICOM window from its command-line form: ``""`` (none), ``"file"`` or ``"CENTER,WIDTH"``."""
    text = text.strip()
    if not text:
        return None
    if text == "file":
        return "file"
    parts = text.replace(" ", ",").split(",")
    parts = [p for p in parts if p]
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"window must be CENTER,WIDTH in modality units (e.g. 40,400 for CT soft tissue) or 'file', got {text!r}"
        ) from None
    if not width > 0:
        raise ValueError(f"the window width must be > 0, got {text!r}")
    return center, width


def read_bands(
    source: str | os.PathLike[str], split: str = "train", *, size: int | None = None, window: Window = None
) -> BandImages:
    """The multi-band images of ``source`` (a format :func:`band_format` recognises), at ``size`` when given.

    ``split``: ``train`` or ``test`` for array files (``images_test`` in a ``.npz``); folders hold one split
    (evaluation splits them). ``window``: DICOM folders only (:func:`read_dicom_folder`)."""
    fmt = band_format(source)
    if fmt is None:
        raise ValueError(
            f"{source} is not multi-band data: give a .npy/.npz of (N, C, H, W) images, a folder of TIFF files or a "
            "folder of DICOM files"
        )
    if fmt == "arrays":
        data = read_band_arrays(source, split=split)
        return data if size is None else data.resized(size)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if fmt == "tiff":
        return read_tiff_folder(source, size=size)
    return read_dicom_folder(source, window=window, size=size)


def band_source_has_test(source: str | os.PathLike[str]) -> bool:
    """Whether a multi-band source has its own test split (a ``.npz`` with ``images_test``/``x_test``)."""
    path = Path(os.fspath(source)).expanduser()
    if not (path.is_file() and path.suffix.lower() == ".npz"):
        return False
    with np.load(path, allow_pickle=False) as content:
        return any(f"{k}_test" in content.files for k in ("images", "x", "data", "X"))


def to_display(
    images: Tensor,
    bands: Sequence[int] = (),
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> Tensor:
    """``uint8`` pictures ``(N, 1 or 3, H, W)`` of images of any bands and dtype, for figures.

    ``bands``: one band (grey) or three (R, G, B, e.g. ``(3, 2, 1)`` for Sentinel-2's B4/B3/B2); default: the
    images themselves when they are ``uint8`` grey or RGB, else the first three bands (one when ``C < 3``).
    Each shown band is stretched from ``low`` to ``high`` (per band, in :func:`to_unit`'s units; default: the
    1st and 99th percentiles of the images shown) onto ``0..255``, clipped: a display stretch only, the data
    are never changed.
    """
    if images.ndim != 4:
        raise ValueError(f"to_display needs (N, C, H, W) images, got {tuple(images.shape)}")
    c = images.shape[1]
    if not bands:
        if images.dtype == torch.uint8 and c in (1, 3):
            return images
        bands = (0, 1, 2) if c >= 3 else (0,)
    bands = tuple(bands)
    if len(bands) not in (1, 3):
        raise ValueError(f"show one band (grey) or three (R G B), got {len(bands)}: {bands}")
    _check_band_indices(bands, c, "bands")
    x = to_unit(images[:, list(bands)].cpu())
    if low is None or high is None:
        if images.dtype == torch.uint8:
            lo, hi = torch.zeros(len(bands)), torch.ones(len(bands))
        else:
            stats = band_stats(x, percentiles=(1.0, 99.0), max_samples=1 << 16)
            lo, hi = torch.tensor(stats.low), torch.tensor(stats.high)
    else:
        lo = torch.tensor([float(low[b]) for b in bands])
        hi = torch.tensor([float(high[b]) for b in bands])
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi)).view(1, -1, 1, 1)
    u = (x - lo.view(1, -1, 1, 1)) / span
    return u.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
