"""Image folders: a recursive scan, and a decoder from any common image file to a fixed-size uint8 tensor.

Decoding is the only per-image work in the whole data path, and it runs in DataLoader workers
(:func:`vicreg.data.folder_loader`). Files that cannot be used (corrupt, truncated, empty, not an image,
smaller than ``min_size``) never stop an epoch: :class:`ImageFolderSource` fills their slot with the next
readable file and reports them with the batch, and the loader warns once with their count and first paths.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from vicreg.paths import expect_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "FolderSample",
    "ImageFolderSource",
    "decode_image",
    "scan_folder",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Modes holding more than 8 bits per sample: scaled to 8 bits (PIL's convert("L") would clip instead).
_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class BadImageError(RuntimeError):
    """An image file could not be used and the loader was asked to be strict (``strict=True``)."""


class FolderSample(NamedTuple):
    """What :class:`ImageFolderSource` returns for one index.

    ``image`` is ``uint8 (C, size, size)`` from file ``used`` (the index asked for, or the next readable file
    when that one is bad); ``bad`` lists ``(path, reason)`` of every file tried and rejected on the way.
    """

    image: Tensor
    label: int
    used: int
    bad: tuple[tuple[str, str], ...]


def _to_8bit(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to ``RGB`` (``channels=3``) or ``L`` (``channels=1``)."""
    target = "RGB" if channels == 3 else "L"
    if img.mode == target:
        return img
    if img.mode in _WIDE_GREY_MODES:
        a = np.asarray(img, dtype=np.float64)
        # "F" (float) samples are on a 0..255 scale by convention and are clipped, as PIL does; 16-bit
        # samples (also PIL's 32-bit "I" mode, which 16-bit PNGs open as) are scaled 0..65535 -> 0..255.
        a8 = np.clip(a, 0, 255) if img.mode == "F" else np.clip(a, 0, 65535) / 257.0
        img = Image.fromarray(np.round(a8).astype(np.uint8), mode="L")
        return img if target == "L" else img.convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL asks palette images with transparency to go through RGBA
    return img.convert(target)  # L, LA, RGBA (alpha dropped), P, CMYK, YCbCr, 1, ...


def decode_image(path: str | Path, size: int, *, channels: int = 3, min_size: int = 0) -> Tensor:
    """Decode one image file to ``uint8 (channels, size, size)``.

    The EXIF orientation is applied; every PIL mode becomes RGB or grey (16-bit scaled to 8 bits, alpha
    dropped); the shorter side is resized to ``size`` (bilinear, antialiased) and the centre ``size x size``
    square is kept, so the aspect ratio is preserved. JPEGs are decoded at a reduced scale when they are much
    larger than ``size`` (libjpeg's DCT scaling, never below ``size``), which is most of the speed on
    full-size photos.

    Raises:
        ValueError: the shorter side is below ``min_size`` pixels (or PIL finds invalid dimensions).
        OSError (PIL's ``UnidentifiedImageError`` included): the file is not a readable image.
        PIL.Image.DecompressionBombError: the header claims more than twice ``Image.MAX_IMAGE_PIXELS``.
        (``tests/reliability/test_fuzz.py`` feeds it random and mutated files: these are all it raises.)
    """
    with Image.open(path) as file:
        img: Image.Image = file
        w, h = img.size
        if min(w, h) < min_size:
            raise ValueError(f"image is {w}x{h}, smaller than min_size={min_size}")
        scale = size / min(w, h)
        if scale < 1:
            file.draft("RGB" if channels == 3 else "L", (int(w * scale) + 1, int(h * scale) + 1))
        img = ImageOps.exif_transpose(img)
        img = _to_8bit(img, channels)
        img = ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR)
        a = np.array(img, dtype=np.uint8)
    t = torch.from_numpy(a)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:  # a link that loops: not a folder (a file name that loops is reported when read)
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _folder_id(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_images(top: str | os.PathLike[str], seen: set[tuple[int, int]]) -> tuple[list[str], int]:
    """The image files under ``top`` (links followed), each real folder visited once; and how many other
    files there were.

    ``seen`` holds the ``(st_dev, st_ino)`` of the folders already visited (shared between calls): a link back
    to an ancestor, or a second link to a folder already read, is not entered again, so a link loop cannot
    multiply the data. Folders are entered in sorted order, so the path kept for a folder reached twice is
    reproducible. Files come grouped by folder (folders sorted by path), sorted by name within a folder:
    torchvision's ``make_dataset`` order. File links are listed as found; one that loops or is broken fails
    when decoded and is skipped like any unreadable file.
    """
    by_folder: dict[str, list[str]] = {}
    others = 0
    for folder, dirs, found in os.walk(top, followlinks=True):
        key = _folder_id(folder)
        if key is None or key in seen:
            dirs[:] = []  # already read under another path (or vanished): do not enter it again
            continue
        seen.add(key)
        dirs.sort()
        images = [f for f in found if _has_image_extension(f)]
        others += len(found) - len(images)
        if images:
            by_folder[folder] = sorted(images)
    files = [os.path.join(d, f) for d in sorted(by_folder) for f in by_folder[d]]
    return files, others


def scan_folder(
    root: str | os.PathLike[str], labeled: bool | None = None
) -> tuple[list[str], list[int] | None, tuple[str, ...]]:
    """Find the image files under ``root``, recursively, in a sorted (reproducible) order.

    ``labeled=None`` (auto): labelled when a top-level sub-folder of ``root`` holds images (at any depth);
    each such sub-folder is then a class, torchvision's ``ImageFolder`` convention (classes in sorted order,
    files in ``make_dataset``'s order), and images lying directly in ``root`` are ignored with a warning.
    Unlabeled otherwise (labels ``None``). ``labeled=False`` reads every image under ``root`` without labels
    (e.g. photos sorted into date folders); ``labeled=True`` requires class sub-folders. Files are selected by
    extension (:data:`IMAGE_EXTENSIONS`, any case); other files are not looked at. Links are followed, but
    each real folder is read once (see :func:`_walk_images`): a link loop does not multiply the data.

    Returns:
        ``(paths, labels or None, class names)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        ValueError: ``root`` is a pipe, a device or a link that loops; no image file under ``root`` (or no
            class sub-folder with images when ``labeled=True``).
    """
    root = expect_folder(root, "an image folder", "point to the folder that holds the images")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    if labeled is not False and any(_is_dir(e) for e in entries):
        seen = {key} if (key := _folder_id(root)) else set()  # a link back to root is not a class's content
        names: list[str] = []
        samples: list[tuple[str, int]] = []
        for entry in (e for e in entries if _is_dir(e)):
            found = _walk_images(entry.path, seen)[0]
            if found:  # only classes that have images, so empty helper folders do not become labels
                samples += [(f, len(names)) for f in found]
                names.append(entry.name)
        if samples:
            loose = [e.name for e in entries if _is_file(e) and _has_image_extension(e.name)]
            if loose:
                warnings.warn(
                    f"{len(loose)} image file(s) directly in {root} (e.g. {loose[0]}) are ignored: the "
                    "folder has class sub-folders; pass labeled=False to read every image without labels",
                    stacklevel=3,
                )
            return [p for p, _ in samples], [c for _, c in samples], tuple(names)
    if labeled:
        raise ValueError(
            f"labeled=True but {root} has no sub-folder with images; put each class's images in "
            "root/<class name>/, or pass labeled=None"
        )
    files, others = _walk_images(root, set())
    if not files:
        what = f"only {others} file(s) with other extensions" if others else "nothing"
        raise ValueError(
            f"no image files under {root}: found {what} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            "recursively); point to the folder that holds the images"
        )
    return sorted(files), None, ()


@dataclass
class ImageFolderSource(Dataset[FolderSample]):
    """A recursive image folder as a map-style torch ``Dataset`` of fixed-size ``uint8`` images.

    Args:
        root: the folder (see :func:`scan_folder` for labels and file types).
        size: every image becomes ``(channels, size, size)`` (see :func:`decode_image`).
        channels: 3 for RGB, 1 for grey.
        labeled: class sub-folders as labels: ``None`` auto, see :func:`scan_folder`.
        min_size: images whose shorter side is below this are rejected as bad. ``None`` means ``size``
            (never upscale); ``0`` keeps every image.

    A file that cannot be used does not raise: its slot is filled with the next readable file (in scan order,
    wrapping around) and the rejected files are listed in :attr:`FolderSample.bad`, so batches keep their
    size (the global-batch statistics of VICReg under ``torch.distributed`` need equal batches on every rank).
    """

    root: str | os.PathLike[str]
    size: int
    channels: int = 3
    labeled: bool | None = None
    min_size: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        self.files, labels, self.classes = scan_folder(self.root, self.labeled)
        self.labels: list[int] | None = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> FolderSample:
        n = len(self.files)
        min_size = self.size if self.min_size is None else self.min_size
        bad: list[tuple[str, str]] = []
        for i in (index + k for k in range(n)):
            i %= n
            path = self.files[i]
            try:
                image = decode_image(path, self.size, channels=self.channels, min_size=min_size)
            except Exception as e:  # PIL raises many types on malformed data; each means "unusable file"
                bad.append((path, f"{type(e).__name__}: {e}"))
                continue
            label = -1 if self.labels is None else self.labels[i]
            return FolderSample(image, label, i, tuple(bad))
        raise BadImageError(
            f"none of the {n} image files under {self.root} could be read (first: {bad[0][0]}: {bad[0][1]})"
        )
