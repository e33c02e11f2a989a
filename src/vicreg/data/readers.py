"""Readers of the array formats: CIFAR (python format), STL-10 binaries, MNIST-format IDX files, numpy files.

Each returns an :class:`~vicreg.data.ImageDataset`. They are written here rather than taken from
torchvision's dataset classes because those check the MD5 of every file on each load (seconds for STL-10's
2.7 GB), cannot read gzipped IDX files in place and unpickle CIFAR files without restriction.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vicreg.data.arrays import ImageDataset
from vicreg.data.numpy_files import DAMAGED_ARCHIVE_ERRORS, check_numpy_file

__all__ = ["idx_file", "read_cifar", "read_idx", "read_idx_folder", "read_numpy", "read_stl10"]

_IDX_PREFIX = {"train": "train", "test": "t10k"}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR file cannot run code when loaded."""

    _allowed = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a CIFAR array file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{path} is not a readable CIFAR (python format) file: {e}") from e


def read_cifar(folder: Path, split: str) -> ImageDataset:
    hundred = (folder / "meta").is_file() or (folder / "train").is_file()
    if hundred:
        files, meta, key, label_key = [split], "meta", "fine_label_names", "fine_labels"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta, key, label_key = "batches.meta", "label_names", "labels"
    images, labels = [], []
    for f in files:
        path = folder / f
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR file {path} is missing; the folder looks incomplete")
        entry = _unpickle(path)
        if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
            raise ValueError(f"{path} is not a CIFAR batch (expected a dict with 'data' and '{label_key}')")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    classes: tuple[str, ...] = ()
    if (folder / meta).is_file():
        classes = tuple(_unpickle(folder / meta)[key])
    return ImageDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        classes,
        name=f"{'cifar100' if hundred else 'cifar10'}:{split}",
    )


def _read_stl_images(path: Path) -> Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"STL-10 file {path} is missing")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size % (3 * 96 * 96):
        raise ValueError(f"{path} is not an STL-10 image file (size not a multiple of 3x96x96)")
    # Stored column-major per channel: transpose H and W, one copy into memory.
    return torch.from_numpy(np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)))


def _read_stl_labels(path: Path) -> Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"STL-10 file {path} is missing")
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1)


def read_stl10(folder: Path, split: str) -> ImageDataset:
    classes: tuple[str, ...] = ()
    if (folder / "class_names.txt").is_file():
        classes = tuple((folder / "class_names.txt").read_text().split())
    name = f"stl10:{split}"
    if split == "unlabeled":
        return ImageDataset(_read_stl_images(folder / "unlabeled_X.bin"), None, classes, name)
    part = "test" if split == "test" else "train"
    images = _read_stl_images(folder / f"{part}_X.bin")
    labels = _read_stl_labels(folder / f"{part}_y.bin")
    if split == "train+unlabeled":
        extra = _read_stl_images(folder / "unlabeled_X.bin")
        images = torch.cat([images, extra])
        labels = torch.cat([labels, torch.full((extra.shape[0],), -1, dtype=torch.int64)])
    return ImageDataset(images, labels, classes, name)


def read_idx(path: str | Path) -> np.ndarray:
    """Read a ``uint8`` IDX file (the MNIST format), gzipped or not, as a numpy array of its shape."""
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} is not a readable IDX file: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()}); "
            "expected MNIST-format files such as train-images-idx3-ubyte[.gz]"
        )
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {body.size} bytes (truncated?)")
    return body.reshape(shape)


def idx_file(folder: Path, split: str, kind: str) -> Path | None:
    stem = f"{_IDX_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_folder(folder: Path, split: str, classes: tuple[str, ...] = ()) -> ImageDataset:
    image_file, label_file = idx_file(folder, split, "images"), idx_file(folder, split, "labels")
    if image_file is None:
        raise FileNotFoundError(f"no {_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] in {folder} for split {split!r}")
    images = read_idx(image_file)
    if images.ndim != 3:
        raise ValueError(f"{image_file}: expected (N, H, W) images, got shape {images.shape}")
    labels = None
    if label_file is not None:
        labels = torch.from_numpy(read_idx(label_file).astype(np.int64))
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{label_file}: {tuple(labels.shape)} labels for {images.shape[0]} images")
        if not classes:
            classes = tuple(str(i) for i in range(int(labels.max()) + 1))
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), labels, classes, f"{folder}:{split}")


_MAGIC = (
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a zip archive (.npz)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x80", "a Python pickle"),
)


def file_content(path: Path) -> str:
    """What the first bytes of ``path`` say it holds, in words (``a PNG image``, ``text``, ...)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "nothing (an empty file)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text"


def read_numpy(path: Path) -> ImageDataset:
    check_numpy_file(path)  # cut short, impossible sizes, damaged archives: one line, before any allocation
    try:
        content = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        expected = "a NumPy .npy array" if path.suffix.lower() == ".npy" else "a zip archive (.npz)"
        found = file_content(path)
        if found != expected:
            raise ValueError(
                f"{path} is not a {path.suffix} file: it holds {found}; write it with numpy.save(path, images) or "
                "numpy.savez(path, images=..., labels=...), or give it the suffix of what it is"
            ) from e
        raise ValueError(f"{path} is not a readable numpy file: {e}") from e
    if isinstance(content, np.ndarray):
        return ImageDataset.from_arrays(content, name=str(path))
    with content:
        keys = list(content.files)
        image_key = next((k for k in ("images", "x", "data", "X") if k in keys), keys[0] if len(keys) == 1 else None)
        if image_key is None:
            raise ValueError(
                f"{path}: cannot tell which array holds the images among {keys}; "
                "name it 'images' (and the labels 'labels')"
            )
        label_key = next((k for k in ("labels", "y", "targets", "Y") if k in keys), None)
        try:
            images = content[image_key]
            labels = content[label_key] if label_key else None
        except DAMAGED_ARCHIVE_ERRORS as err:  # a bad CRC or a cut stream, met while decompressing
            raise ValueError(
                f"{path} is a damaged .npz archive ({type(err).__name__}: {err}); write or copy it again"
            ) from err
        return ImageDataset.from_arrays(images, labels, name=str(path))
