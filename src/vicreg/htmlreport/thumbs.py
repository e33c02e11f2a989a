"""Small pictures for the HTML report, as PNG data URIs that live inside the page.

* :func:`image_thumbnails`: uint8 images ``(N, C, H, W)`` downscaled to at most ``size`` pixels a side;
* :func:`signal_images` / :func:`signal_thumbnails`: a sparkline of each series ``(N, C, T)`` (one colour per
  channel, up to three), drawn with Pillow (thousands of matplotlib figures would take minutes);
* :func:`table_texts`: a table row as ``name=value`` text (tables have no picture);
* :func:`png_data_uri` / :func:`figure_data_uri`: PNG bytes, a Pillow image or a matplotlib figure as a data URI.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = [
    "THUMBNAIL_SIZE",
    "figure_data_uri",
    "image_thumbnails",
    "png_data_uri",
    "signal_images",
    "signal_thumbnails",
    "table_texts",
    "to_rgb",
]

THUMBNAIL_SIZE = 40
"""Longest side in pixels of a thumbnail in the report (2000 of them stay a few MB)."""

SIGNAL_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44))  # matplotlib's tab:blue, tab:orange, tab:green


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def png_data_uri(png: bytes | Image.Image) -> str:
    """``data:image/png;base64,...`` of PNG bytes or of a Pillow image (encoded as PNG)."""
    if isinstance(png, Image.Image):
        buf = io.BytesIO()
        png.save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    if not png.startswith(b"\x89PNG"):
        raise ValueError("png_data_uri needs PNG bytes (they start with \\x89PNG) or a PIL image")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_data_uri(fig: Any, dpi: float | None = None) -> str:
    """A matplotlib figure as a PNG data URI (white background, the figure's own dpi unless given)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi if dpi is None else dpi, facecolor="white")
    return png_data_uri(buf.getvalue())


def to_rgb(images: Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` -> ``(N, H, W)`` grey (one channel) or ``(N, H, W, 3)`` (the first three channels;
    two channels show the first)."""
    arr = _numpy(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] < 1:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {arr.dtype} {arr.shape}")
    if arr.shape[1] < 3:
        return arr[:, 0]
    return np.ascontiguousarray(arr[:, :3].transpose(0, 2, 3, 1))


def image_thumbnails(images: Tensor | np.ndarray, size: int = THUMBNAIL_SIZE) -> list[str]:
    """One PNG data URI per image ``(N, C, H, W)`` uint8, downscaled (never enlarged) so its longest side is at
    most ``size`` pixels; the browser enlarges small ones sharply (``image-rendering: pixelated``)."""
    if size < 1:
        raise ValueError(f"thumbnail size must be >= 1 pixel, got {size}")
    out = []
    for arr in to_rgb(images):
        im = Image.fromarray(arr)
        if max(im.size) > size:
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
        out.append(png_data_uri(im))
    return out


def signal_images(series: Tensor | np.ndarray, size: tuple[int, int] = (96, 40), max_channels: int = 3) -> np.ndarray:
    """A sparkline per series ``(N, C, T)``: uint8 ``(N, 3, height, width)`` pictures (``size`` is ``(width,
    height)``), the first ``max_channels`` channels in blue, orange, green on white, scaled to each series' range."""
    arr = _numpy(series).astype(np.float64)
    if arr.ndim == 2:
        arr = arr[:, None]
    if arr.ndim != 3 or arr.shape[2] < 1:
        raise ValueError(f"series must be (N, C, T) or (N, T), got {arr.shape}")
    width, height = size
    if width < 2 or height < 2 or not 1 <= max_channels <= len(SIGNAL_COLORS):
        raise ValueError(f"need a size of at least 2x2 and 1..3 channels, got {size} and {max_channels}")
    arr = np.nan_to_num(arr[:, :max_channels])
    t = arr.shape[2]
    xs = np.linspace(1, width - 2, t) if t > 1 else np.full(1, width / 2)
    out = np.empty((arr.shape[0], 3, height, width), dtype=np.uint8)
    for n, rows in enumerate(arr):
        lo, hi = float(rows.min()), float(rows.max())
        scale = (height - 3) / (hi - lo) if hi > lo else 0.0
        im = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(im)
        for c, row in enumerate(rows):
            ys = height - 2 - (row - lo) * scale if scale else np.full(t, height / 2)
            draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=SIGNAL_COLORS[c], width=1)
        out[n] = np.asarray(im).transpose(2, 0, 1)
    return out


def signal_thumbnails(
    series: Tensor | np.ndarray, size: tuple[int, int] = (96, 40), max_channels: int = 3
) -> list[str]:
    """:func:`signal_images` as PNG data URIs."""
    return [png_data_uri(Image.fromarray(im.transpose(1, 2, 0))) for im in signal_images(series, size, max_channels)]


def table_texts(rows: Tensor | np.ndarray, columns: Sequence[str] | None = None, max_values: int = 8) -> list[str]:
    """``"age=41, income=3.2e+04, ... (+5 more)"`` per row ``(N, D)``; columns are named ``x0, x1, ...`` unless
    given."""
    arr = _numpy(rows)
    if arr.ndim != 2:
        raise ValueError(f"table rows must be (N, D), got {arr.shape}")
    names = list(columns) if columns is not None else [f"x{i}" for i in range(arr.shape[1])]
    if len(names) != arr.shape[1]:
        raise ValueError(f"{len(names)} column names for {arr.shape[1]} columns")
    shown = min(max_values, arr.shape[1])
    more = f" (+{arr.shape[1] - shown} more)" if arr.shape[1] > shown else ""
    return [", ".join(f"{names[i]}={float(r[i]):.3g}" for i in range(shown)) + more for r in arr]
