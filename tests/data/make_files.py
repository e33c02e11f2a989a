"""Small dataset files written by the tests themselves: IDX, CIFAR pickles, STL-10 binaries, image trees."""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes, gzipped when ``path`` ends in ``.gz``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    """MNIST-format files for both splits; returns the arrays written."""
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[prefix] = (images, labels)
    return out


def cifar_images(n: int, offset: int = 0) -> np.ndarray:
    """(n, 3, 32, 32) uint8 images whose pixels encode (image, channel, row, column) recognisably."""
    i, c, h, w = np.meshgrid(np.arange(n) + offset, np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((i * 7 + c * 50 + h * 3 + w) % 256).astype(np.uint8)


def write_cifar10(folder: Path, per_batch: int = 4) -> Path:
    """torchvision's ``cifar-10-batches-py`` layout: 5 train batches, a test batch and the meta file."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(6):
        name = f"data_batch_{k + 1}" if k < 5 else "test_batch"
        data = cifar_images(per_batch, offset=k * per_batch).reshape(per_batch, -1)
        entry = {"batch_label": name, "data": data, "labels": [(k + j) % 10 for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"class{j}" for j in range(10)], "num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar100(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        entry = {
            "data": cifar_images(n).reshape(n, -1),
            "fine_labels": [j * 11 % 100 for j in range(n)],
            "coarse_labels": [j % 20 for j in range(n)],
        }
        (folder / split).write_bytes(pickle.dumps(entry, protocol=4))
    meta = {"fine_label_names": [f"fine{j}" for j in range(100)], "coarse_label_names": []}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def write_stl10(folder: Path, n_train: int = 3, n_test: int = 2, n_unlabeled: int = 4) -> dict:
    """STL-10 binaries: images column-major per channel, labels 1-based. Returns the (N,3,96,96) truths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    truth = {}
    for part, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        (folder / f"{part}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        if part != "unlabeled":
            labels = (np.arange(n) % 10 + 1).astype(np.uint8)
            (folder / f"{part}_y.bin").write_bytes(labels.tobytes())
        truth[part] = images
    (folder / "class_names.txt").write_text("\n".join(f"stl{j}" for j in range(10)) + "\n")
    return truth


def save_image(path: Path, size: tuple[int, int] = (24, 20), mode: str = "RGB", color=None, **kw) -> Path:
    """A small image of ``size`` (w, h), saved with PIL in the format of the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(a, "RGB")
        img = img.convert(mode) if mode != "RGB" else img
    else:
        img = Image.new(mode, size, color)
    img.save(path, **kw)
    return path


def make_bad_files(folder: Path) -> list[Path]:
    """Files with image extensions that cannot be used; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    good = save_image(folder / "_source.jpg", (64, 48))
    data = good.read_bytes()
    good.unlink()
    bad = [
        folder / "empty.jpg",
        folder / "truncated.jpg",
        folder / "text.png",
        folder / "noise.webp",
        folder / "dangling.bmp",
    ]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(data[: len(data) // 2])
    bad[2].write_text("this is not an image\n")
    bad[3].write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    bad[4].symlink_to(folder / "does-not-exist.bmp")  # unreadable, even for root
    return bad
