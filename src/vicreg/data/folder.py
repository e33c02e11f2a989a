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
from torchvision.datasets.folder import find_classes, make_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "FolderSample",
    "ImageFolderSource",
    "decode_image",
    "scan_folder",
    "shorter_sides",
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


def shorter_sides(paths: list[str], limit: int = 256, seed: int = 0) -> list[int]:
    """The shorter side of up to ``limit`` of ``paths`` (a seeded sample; only the headers are read), the EXIF
    rotation aside; unreadable files are left out."""
    rng = np.random.default_rng(seed)
    picked = paths if len(paths) <= limit else [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    sides = []
    for path in picked:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except Exception:  # any unreadable file is the loader's to report
            continue
    return sides


def _has_image_extension(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(
    root: str | os.PathLike[str], labeled: bool | None = None
) -> tuple[list[str], list[int] | None, tuple[str, ...]]:
    """Find the image files under ``root``, recursively, in a sorted (reproducible) order.

    ``labeled=None`` (auto): labelled when a top-level sub-folder of ``root`` holds images (at any depth);
    each such sub-folder is then a class, torchvision's ``ImageFolder`` convention (its ``find_classes`` and
    ``make_dataset`` are used), and images lying directly in ``root`` are ignored with a warning.
    Unlabeled otherwise (labels ``None``). ``labeled=False`` reads every image under ``root`` without labels
    (e.g. photos sorted into date folders); ``labeled=True`` requires class sub-folders. Files are selected by
    extension (:data:`IMAGE_EXTENSIONS`, any case); other files are not looked at.

    Returns:
        ``(paths, labels or None, class names)``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        ValueError: no image file under ``root`` (or no class sub-folder with images when ``labeled=True``).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist; check the path")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file, not an image folder")
    if labeled is not False and any(e.is_dir() for e in os.scandir(root)):
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, is_valid_file=_has_image_extension, allow_empty=True)
        # Keep only the classes that have images, so empty helper folders do not become labels.
        used = sorted({c for _, c in samples})
        if used:
            loose = [e.name for e in os.scandir(root) if e.is_file() and _has_image_extension(e.name)]
            if loose:
                warnings.warn(
                    f"{len(loose)} image file(s) directly in {root} (e.g. {loose[0]}) are ignored: the "
                    "folder has class sub-folders; pass labeled=False to read every image without labels",
                    stacklevel=3,
                )
            remap = {old: new for new, old in enumerate(used)}
            names = tuple(classes[c] for c in used)
            return [p for p, _ in samples], [remap[c] for _, c in samples], names
    if labeled:
        raise ValueError(
            f"labeled=True but {root} has no sub-folder with images; put each class's images in "
            "root/<class name>/, or pass labeled=None"
        )
    files: list[str] = []
    others = 0
    for d, _, found in os.walk(root, followlinks=True):
        for f in found:
            if _has_image_extension(f):
                files.append(os.path.join(d, f))
            else:
                others += 1
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
