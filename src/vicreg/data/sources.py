"""Datasets by name or path, read into an :class:`~vicreg.data.ImageDataset`.

Names (``cifar10``, ``cifar100``, ``stl10``, ``mnist``, ``fashion-mnist``) are looked up without the network
first: in the ``root`` argument, in ``$VICREG_DATA`` (one or more folders separated by ``os.pathsep``; the user's
default, read here and never written), in the user cache
(``$XDG_CACHE_HOME/vicreg``, default ``~/.cache/vicreg``) and, for Fashion-MNIST, in the Debian package's
folder ``/usr/share/datasets/fashion-mnist`` (``apt install dataset-fashion-mnist``). Each root may hold the
torchvision layout (``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``, ``MNIST/raw/``,
``FashionMNIST/raw/``) or a folder named after the dataset (``fashion-mnist/``, ``mnist/``). When nothing is
found, torchvision's standard download fills the first of these folders.

The formats are read by :mod:`vicreg.data.readers`; torchvision is used for the downloads.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torchvision.datasets as tvd
from torch import Tensor

from vicreg.data.arrays import FloatDataset, ImageDataset, Kind, as_labels
from vicreg.data.folder import ImageFolderSource
from vicreg.data.loaders import decode_folder, load_folder
from vicreg.data.numpy_files import check_numpy_file
from vicreg.data.readers import idx_file, read_cifar, read_idx_folder, read_numpy, read_stl10
from vicreg.deprecation import renamed
from vicreg.paths import expect_file, path_kind

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST",
    "SKLEARN_TABLES",
    "SizedImages",
    "aeon_datasets",
    "find_dataset",
    "has_splits",
    "is_image_folder",
    "load",
    "load_at_size",
    "load_float_rows",
    "load_pairs",
    "search_roots",
]

SKLEARN_TABLES = ("wine", "breast_cancer", "digits", "iris")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# name -> sub-folders of a data root where its files may lie (torchvision's layout first)
_LAYOUTS: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
    "cifar100": ("cifar-100-python", "cifar100/cifar-100-python"),
    "stl10": ("stl10_binary", "stl10/stl10_binary"),
    "mnist": ("MNIST/raw", "mnist"),
    "fashion-mnist": ("FashionMNIST/raw", "fashion-mnist"),
}
DATASET_NAMES = tuple(_LAYOUTS)
_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
}
_SPLITS = {
    "cifar": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "idx": ("train", "test"),
    "arrays": ("train", "test"),  # .npz signals / tables / pairs, aeon:<Name>, sklearn:<name>
}


def _canonical(name: str) -> str | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in _LAYOUTS else None


def search_roots(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for datasets by name, in order: ``root`` (if given), ``$VICREG_DATA`` entries, then
    the user cache."""
    roots = [Path(p).expanduser() for p in os.environ.get("VICREG_DATA", "").split(os.pathsep) if p]
    if root is not None:
        first = Path(root).expanduser()
        roots = [first, *(r for r in roots if r != first)]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [*roots, Path(cache) / "vicreg"]


def _candidates(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    places = [folder / sub for folder in search_roots(root) for sub in _LAYOUTS[name]]
    if name == "fashion-mnist":
        places.append(DEBIAN_FASHION_MNIST)
    return places


def _complete(name: str, folder: Path) -> bool:
    if name == "cifar10":
        return (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file()
    if name == "cifar100":
        return (folder / "train").is_file() and (folder / "test").is_file()
    if name == "stl10":
        return (folder / "train_X.bin").is_file() or (folder / "unlabeled_X.bin").is_file()
    return idx_file(folder, "train", "images") is not None


def _download(name: str, root: Path) -> None:
    """torchvision's standard download into ``root`` (its own layout)."""
    root.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        tvd.CIFAR10(str(root), download=True)
    elif name == "cifar100":
        tvd.CIFAR100(str(root), download=True)
    elif name == "stl10":
        tvd.STL10(str(root), split="test", download=True)
    elif name == "mnist":
        tvd.MNIST(str(root), download=True)
    else:
        tvd.FashionMNIST(str(root), download=True)


def find_dataset(name: str, *, download: bool = True, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding dataset ``name``'s files: found locally (``root`` first, see the module doc) or
    downloaded into the first folder searched.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: not found and ``download=False`` or the download failed (e.g. offline); the
            message lists where it looked and how to get the files.
    """
    key = _canonical(name)
    if key is None:
        raise ValueError(
            f"unknown dataset name {name!r}; known names: {', '.join(DATASET_NAMES)}, "
            "or pass a path (image folder, dataset folder, .npy/.npz file)"
        )
    for place in _candidates(key, root):
        if place.is_dir() and _complete(key, place):
            return place
    error = ""
    if download:
        target = search_roots(root)[0]
        try:
            _download(key, target)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError
            error = f"The download into {target} failed ({type(e).__name__}: {e}). "
        else:
            for place in _candidates(key, root):
                if place.is_dir() and _complete(key, place):
                    return place
            error = f"The download into {target} finished but its files were not found there. "
    looked = "\n  ".join(str(p) for p in _candidates(key, root))
    hint = "install the Debian package (apt install dataset-fashion-mnist), or " if key == "fashion-mnist" else ""
    raise FileNotFoundError(
        f"dataset {key!r} not found. {error}Looked in:\n  {looked}\n"
        f"To get it: {hint}run once with network access (download=True), or copy its files into one of "
        "these folders, or pass the folder that holds them with --data-root (or set VICREG_DATA to it)."
    )


def _detect(folder: Path) -> str | None:
    """Which array format a folder holds, if any (``None``: treat it as an image folder)."""
    if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
        return "cifar"
    if (folder / "meta").is_file() and ((folder / "train").is_file() or (folder / "test").is_file()):
        return "cifar"
    if any((folder / f).is_file() for f in ("train_X.bin", "test_X.bin", "unlabeled_X.bin")):
        return "stl10"
    if idx_file(folder, "train", "images") or idx_file(folder, "test", "images"):
        return "idx"
    return None


def _dataset_subfolder(folder: Path) -> Path:
    """A data root holding one dataset in a known layout (``root/cifar-10-batches-py``) -> that folder."""
    if _detect(folder) is not None:
        return folder
    found = [
        folder / sub
        for name, subs in _LAYOUTS.items()
        for sub in subs
        if (folder / sub).is_dir() and _complete(name, folder / sub)
    ]
    if len(found) > 1:
        raise ValueError(
            f"{folder} holds several datasets ({', '.join(str(f) for f in found)}); pass one of these folders"
        )
    return found[0] if found else folder


def _check_split(kind: str, split: str, where: object) -> None:
    if split not in _SPLITS[kind]:
        raise ValueError(f"{where}: unknown split {split!r}; choose one of {', '.join(_SPLITS[kind])}")


def has_splits(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` has its own train/test splits (a dataset name or a CIFAR/STL-10/IDX folder)."""
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        return _canonical(os.fspath(source)) is not None
    return path.is_dir() and _detect(_dataset_subfolder(path)) is not None


def is_image_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder of image files (streamed), rather than a dataset format or a file."""
    p = Path(path).expanduser()
    return p.is_dir() and _detect(_dataset_subfolder(p)) is None


def load(
    source: str | os.PathLike[str],
    split: str = "train",
    *,
    size: int | None = None,
    channels: int | None = None,
    download: bool = True,
    strict: bool = False,
    num_workers: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Load a whole dataset into memory as an :class:`ImageDataset` (``uint8 (N, C, H, W)`` + labels).

    Args:
        source: a dataset name (:data:`DATASET_NAMES`, found or downloaded as the module doc says) or a path:
            a CIFAR (python format), STL-10 binary or MNIST-format IDX folder (gzipped or not), a ``.npy`` /
            ``.npz`` file (images under ``images``/``x``/``data``, optional labels under
            ``labels``/``y``/``targets``), or an image folder (decoded once by
            :func:`vicreg.data.folder_loader`; needs ``size``).
        split: ``train`` or ``test``; STL-10 also ``unlabeled`` (100k images, labels ``None``) and
            ``train+unlabeled`` (labels ``-1`` on the unlabeled part). Ignored for numpy files and folders.
        size: resize to ``size x size`` (shorter side then centre crop, antialiased). Required for image
            folders; optional elsewhere (e.g. STL-10 at 64 px).
        channels: 3 or 1 to convert (grey repeated to RGB, RGB to luma); ``None`` keeps the native channels.
        download: allow torchvision's download for a name that is not found locally.
        strict, num_workers: for image folders, see :func:`vicreg.data.folder_loader`.
        root: a folder searched first for a dataset name (see :func:`find_dataset`).

    Raises:
        FileNotFoundError: a path that does not exist, or a name not found (the message says how to get it).
        ValueError: an unknown name, split or format, or an empty folder; the message names the path.
    """
    text = os.fspath(source)
    key = _canonical(text) if not Path(text).expanduser().exists() else None
    if key is not None:
        folder = find_dataset(key, download=download, root=root)
        kind = {"cifar10": "cifar", "cifar100": "cifar", "stl10": "stl10"}.get(key, "idx")
        _check_split(kind, split, key)
        if kind == "cifar":
            data = read_cifar(folder, split)
        elif kind == "stl10":
            data = read_stl10(folder, split)
        else:
            fashion = key == "fashion-mnist"
            digits = tuple(str(i) for i in range(10))
            data = read_idx_folder(folder, split, FASHION_CLASSES if fashion else digits)
        data = ImageDataset(data.images, data.labels, data.classes, f"{key}:{split}")
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist and is not a dataset name ({', '.join(DATASET_NAMES)})")
        what = path_kind(path)
        if what not in ("a file", "a folder"):
            raise ValueError(
                f"{path} is {what}, not a data file or folder; pass a .npy/.npz file, a dataset folder or an "
                "image folder"
            )
        if path.is_file():
            if path.suffix.lower() not in (".npy", ".npz"):
                raise ValueError(
                    f"{path}: unknown file format {path.suffix or '(no extension)'}; "
                    "expected a .npy/.npz array file, or a folder"
                )
            data = read_numpy(path)
        else:
            path = _dataset_subfolder(path)
            kind_or_none = _detect(path)
            if kind_or_none is None:
                if size is None:
                    raise ValueError(f"{path} is read as an image folder, which needs a size: load(path, size=...)")
                return load_folder(path, size, channels=channels or 3, strict=strict, num_workers=num_workers)
            _check_split(kind_or_none, split, path)
            reader = {"cifar": read_cifar, "stl10": read_stl10, "idx": read_idx_folder}[kind_or_none]
            data = reader(path, split)
    if size is not None:
        data = data.resized(size)
    return data if channels is None else data.with_channels(channels)


class SizedImages(NamedTuple):
    """A split at the encoder's size, with what evaluation and ``vicreg embed`` report about it."""

    data: ImageDataset
    native_size: tuple[int, int] | None
    """The images' size before resizing (``None`` for image folders, decoded straight to the size)."""
    paths: list[str] | None
    """The file of each row for image folders, ``None`` otherwise."""


def load_at_size(
    source: str | os.PathLike[str],
    split: str,
    *,
    size: int,
    channels: int,
    download: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> SizedImages:
    """One split of images at ``size x size`` and ``channels``: whole images, shorter side resized (bilinear,
    antialiased) then centre-cropped; image folders are decoded once, in scan order, with their paths."""
    path = Path(os.fspath(source)).expanduser()
    if is_image_folder(path):
        data, paths = decode_folder(ImageFolderSource(path, size, channels=channels))
        return SizedImages(data, None, paths)
    data = load(source, split, channels=channels, download=download, root=root)
    return SizedImages(data.resized(size), data.image_size, None)


# ------------------------------------------------------------------------------------------------ float data
# Signals and tables: a ``.npz`` file (``x``, ``y``, ``x_test``, ``y_test``; pairs ``x_a``, ``x_b``, ...),
# ``aeon:<Name>`` (a time-series set bundled inside aeon) or ``sklearn:<name>`` (a bundled scikit-learn table,
# split 75 / 25 stratified with a fixed seed: there is no official split).


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    expect_file(path, "a .npz file", "signals and tables are read from a .npz file (keys x, y, x_test, y_test)")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: signals and tables are read from a .npz file (keys x, y, x_test, y_test)")
    check_numpy_file(path)  # cut short, impossible sizes, damaged archives, text columns: one line, no allocation
    try:
        content = np.load(path, allow_pickle=False)
        if isinstance(content, np.ndarray):
            raise ValueError("a single array")
        with content as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path} is not a readable .npz archive ({type(err).__name__}: {err}); write it with numpy.savez(path, "
            "x=..., y=...)"
        ) from err


def _aeon_root() -> Path:
    try:
        import aeon.datasets
    except ImportError as err:
        raise ImportError(
            "aeon:<Name> datasets need aeon: pip install aeon (or pip install 'vicreg[timeseries]')"
        ) from err
    return Path(aeon.datasets.__file__).parent / "data"


def aeon_datasets() -> list[str]:
    """Names of the classification sets bundled inside the installed aeon package (train and test files)."""
    root = _aeon_root()
    return sorted(
        p.name for p in root.iterdir() if (p / f"{p.name}_TRAIN.ts").is_file() and (p / f"{p.name}_TEST.ts").is_file()
    )


def _load_aeon(name: str, split: str) -> FloatDataset:
    from aeon.datasets import load_from_ts_file  # optional dependency

    root = _aeon_root()
    if not (root / name / f"{name}_TRAIN.ts").is_file():
        raise ValueError(
            f"aeon:{name} is not bundled with the installed aeon (no download is attempted); bundled: "
            f"{', '.join(aeon_datasets())}"
        )
    parts = {s: load_from_ts_file(str(root / name / f"{name}_{s.upper()}.ts")) for s in _SPLITS["arrays"]}
    for s, (x, _) in parts.items():
        if not isinstance(x, np.ndarray):
            raise ValueError(f"aeon:{name} ({s}) holds series of unequal length; pick an equal-length set")
    classes = np.unique(np.concatenate([np.asarray(y) for _, y in parts.values()]))
    x, y = parts[split]
    codes = np.searchsorted(classes, np.asarray(y))
    return FloatDataset.from_arrays(
        x, codes, kind="signal", classes=[str(c) for c in classes], name=f"aeon:{name}:{split}"
    )


def _load_sklearn(name: str, split: str) -> FloatDataset:
    try:  # optional dependency (vicreg[tables]); imported here because it is slow to import
        import sklearn.datasets
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("sklearn:<name> tables need scikit-learn: pip install scikit-learn") from err
    if name not in SKLEARN_TABLES:
        raise ValueError(f"unknown scikit-learn table {name!r}; choose one of {', '.join(SKLEARN_TABLES)}")
    bunch = getattr(sklearn.datasets, f"load_{name}")()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    classes = [str(c) for c in getattr(bunch, "target_names", np.unique(bunch.target))]
    return FloatDataset.from_arrays(x, y, kind="table", classes=classes, name=f"sklearn:{name}:{split}")


def load_float_rows(source: str | os.PathLike[str], split: str = "train", *, kind: Kind) -> FloatDataset:
    """Load signals (``kind="signal"``) or table rows (``kind="table"``) into memory; see the module doc."""
    text = os.fspath(source)
    _check_split("arrays", split, text)
    if kind not in ("signal", "table"):
        raise ValueError(f"kind must be 'signal' or 'table', got {kind!r}")
    if text.startswith("aeon:"):
        if kind != "signal":
            raise ValueError(f"{text} is a time-series set: use it with modality signal")
        return _load_aeon(text.removeprefix("aeon:"), split)
    if text.startswith("sklearn:"):
        if kind != "table":
            raise ValueError(f"{text} is a table: use it with modality table")
        return _load_sklearn(text.removeprefix("sklearn:"), split)
    path = Path(text).expanduser()
    arrays = _read_npz(path)
    suffix = "" if split == "train" else "_test"
    if f"x{suffix}" not in arrays:
        raise (KeyError if split == "test" else ValueError)(
            f"{path}: no array 'x{suffix}' for the {split} split (keys: {', '.join(sorted(arrays))})"
        )
    return FloatDataset.from_arrays(
        arrays[f"x{suffix}"], arrays.get(f"y{suffix}"), kind=kind, name=f"{path.name}:{split}"
    )


def load_pairs(path: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray, Tensor | None]:
    """The raw arrays ``x_a``, ``x_b`` and labels (or None) of a pair ``.npz`` file (``_test`` keys for the test
    split); the caller converts each side for its modality. Rows must correspond."""
    path = Path(path).expanduser()
    _check_split("arrays", split, path)
    arrays = _read_npz(path)
    suffix = "" if split == "train" else "_test"
    missing = [k for k in (f"x_a{suffix}", f"x_b{suffix}") if k not in arrays]
    if missing:
        raise (KeyError if split == "test" else ValueError)(
            f"{path}: a pair file needs x_a and x_b (and x_a_test, x_b_test for a test split); missing "
            f"{', '.join(missing)} (keys: {', '.join(sorted(arrays))})"
        )
    a, b = arrays[f"x_a{suffix}"], arrays[f"x_b{suffix}"]
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{path}: x_a{suffix} has {a.shape[0]} rows but x_b{suffix} has {b.shape[0]}; rows must pair up"
        )
    return a, b, as_labels(arrays.get(f"y{suffix}"), a.shape[0], str(path))


if TYPE_CHECKING:  # load_float_rows was called load_arrays (one release)
    load_arrays = load_float_rows
else:
    __getattr__ = renamed(__name__, {"load_arrays": load_float_rows})
