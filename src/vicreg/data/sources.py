"""Datasets by name or path, read into an :class:`~vicreg.data.ArrayDataset`.

Names (``cifar10``, ``cifar100``, ``stl10``, ``mnist``, ``fashion-mnist``) are looked up without the network
first: in ``$VICREG_DATA`` (one or more folders separated by ``os.pathsep``), in the user cache
(``$XDG_CACHE_HOME/vicreg``, default ``~/.cache/vicreg``) and, for Fashion-MNIST, in the Debian package's
folder ``/usr/share/datasets/fashion-mnist`` (``apt install dataset-fashion-mnist``). Each root may hold the
torchvision layout (``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``, ``MNIST/raw/``,
``FashionMNIST/raw/``) or a folder named after the dataset (``fashion-mnist/``, ``mnist/``). When nothing is
found, torchvision's standard download fills ``$VICREG_DATA`` (its first folder) or the user cache.

The formats are read by :mod:`vicreg.data.readers`; torchvision is used for the downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

from vicreg.data.arrays import ArrayDataset
from vicreg.data.readers import idx_file, read_cifar, read_idx_folder, read_numpy, read_stl10

__all__ = ["DATASET_NAMES", "DEBIAN_FASHION_MNIST", "find_dataset", "is_image_folder", "load", "search_roots"]

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
}


def _canonical(name: str) -> str | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in _LAYOUTS else None


def search_roots() -> list[Path]:
    """The folders searched for datasets by name, in order: ``$VICREG_DATA`` entries, then the user cache."""
    roots = [Path(p).expanduser() for p in os.environ.get("VICREG_DATA", "").split(os.pathsep) if p]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [*roots, Path(cache) / "vicreg"]


def _candidates(name: str) -> list[Path]:
    places = [root / sub for root in search_roots() for sub in _LAYOUTS[name]]
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
    import torchvision.datasets as tvd

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


def find_dataset(name: str, *, download: bool = True) -> Path:
    """The folder holding dataset ``name``'s files: found locally (see the module doc) or downloaded.

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
    for place in _candidates(key):
        if place.is_dir() and _complete(key, place):
            return place
    error = ""
    if download:
        target = search_roots()[0]
        try:
            _download(key, target)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError
            error = f"The download into {target} failed ({type(e).__name__}: {e}). "
        else:
            for place in _candidates(key):
                if place.is_dir() and _complete(key, place):
                    return place
            error = f"The download into {target} finished but its files were not found there. "
    looked = "\n  ".join(str(p) for p in _candidates(key))
    hint = "install the Debian package (apt install dataset-fashion-mnist), or " if key == "fashion-mnist" else ""
    raise FileNotFoundError(
        f"dataset {key!r} not found. {error}Looked in:\n  {looked}\n"
        f"To get it: {hint}run once with network access (download=True), or copy its files into one of "
        "these folders, or set VICREG_DATA to the folder that holds them."
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
) -> ArrayDataset:
    """Load a whole dataset into memory as an :class:`ArrayDataset` (``uint8 (N, C, H, W)`` + labels).

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

    Raises:
        FileNotFoundError: a path that does not exist, or a name not found (the message says how to get it).
        ValueError: an unknown name, split or format, or an empty folder; the message names the path.
    """
    text = os.fspath(source)
    key = _canonical(text) if not Path(text).expanduser().exists() else None
    if key is not None:
        folder = find_dataset(key, download=download)
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
        data = ArrayDataset(data.images, data.labels, data.classes, f"{key}:{split}")
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist and is not a dataset name ({', '.join(DATASET_NAMES)})")
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
                from vicreg.data.loaders import load_folder

                return load_folder(path, size, channels=channels or 3, strict=strict, num_workers=num_workers)
            _check_split(kind_or_none, split, path)
            reader = {"cifar": read_cifar, "stl10": read_stl10, "idx": read_idx_folder}[kind_or_none]
            data = reader(path, split)
    if size is not None:
        data = data.resized(size)
    return data if channels is None else data.with_channels(channels)
