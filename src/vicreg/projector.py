"""TensorBoard's embedding projector for a run: ``tensorboard --logdir DIR`` shows the points in its Projector
tab (PCA, t-SNE, UMAP in the browser, searchable by label, thumbnails on the points).

:func:`write_projector` hands the embeddings, the metadata and the thumbnails to torch's
``SummaryWriter.add_embedding``, which writes ``DIR/projector_config.pbtxt`` and, under
``DIR/<step>/<tag>/``, ``tensors.tsv``, ``metadata.tsv`` and ``sprite.png``. Thumbnails are downscaled so that
the sprite stays within the projector's 8192 x 8192 pixels.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf import text_format
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from torch import Tensor
from torch.nn.functional import interpolate, pad
from torch.utils.tensorboard import SummaryWriter

from vicreg.checkpoint import atomic_write

__all__ = ["MAX_PROJECTOR_POINTS", "SPRITE_LIMIT", "sprite_cell", "write_projector"]

SPRITE_LIMIT = 8192
"""The projector refuses sprites larger than this many pixels a side."""
MAX_PROJECTOR_POINTS = 10_000
"""A seeded subset of at most this many rows by default: tensors.tsv is text, and the browser does the math."""


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def sprite_cell(n: int, height: int, width: int, limit: int = SPRITE_LIMIT) -> tuple[int, int]:
    """Thumbnail ``(height, width)`` for ``n`` points: the original size, shrunk (aspect kept) until the
    ``ceil(sqrt(n))``-wide square sprite fits in ``limit`` pixels."""
    side = max(1, math.ceil(math.sqrt(max(n, 1))))
    scale = min(1.0, limit / (side * max(height, width)))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def write_projector(
    log_dir: str | os.PathLike[str],
    embeddings: Tensor | np.ndarray,
    labels: Sequence[object] | Tensor | np.ndarray | None = None,
    *,
    thumbnails: Tensor | np.ndarray | None = None,
    names: Sequence[str] | None = None,
    tag: str = "representation",
    step: int = 0,
    max_points: int | None = MAX_PROJECTOR_POINTS,
    seed: int = 0,
) -> Path:
    """Write the projector files of ``embeddings`` ``(N, D)`` into ``log_dir``; returns its ``projector_config.pbtxt``.

    ``labels`` (class names or ids, one per row) and ``names`` (e.g. file names) become the ``label`` and
    ``name`` columns of ``metadata.tsv`` beside ``index`` (the row in the given data). ``thumbnails``: uint8
    ``(N, C, H, W)`` (grey, RGB, or the first three bands; ``htmlreport.signal_images`` draws signals). Above
    ``max_points`` rows a seeded subset is written (``None``: all). A second call with the same ``tag`` and
    ``step`` replaces the first; other tags and steps stay in ``projector_config.pbtxt``.
    """
    mat = _numpy(embeddings).astype(np.float32, copy=False)
    if mat.ndim != 2 or mat.shape[0] < 1:
        raise ValueError(f"embeddings must be a non-empty (N, D) matrix, got {mat.shape}")
    n = mat.shape[0]
    for what, values in (("labels", labels), ("names", names), ("thumbnails", thumbnails)):
        if values is not None and len(values) != n:
            raise ValueError(f"{what} has {len(values)} entries for {n} embeddings")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
    keep = np.arange(n)
    if max_points is not None and n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    columns: list[tuple[str, list[str]]] = [("index", [str(i) for i in range(n)])]
    if labels is not None:
        columns.append(
            ("label", [str(v) for v in (labels if isinstance(labels, Sequence) else _numpy(labels).tolist())])
        )
    if names is not None:
        columns.append(("name", [str(v).replace("\t", " ").replace("\n", " ") for v in names]))
    # one column: plain lines (the projector reads a header only when there are several columns)
    header = [c for c, _ in columns] if len(columns) > 1 else None
    metadata: list[Any] = [[v[i] for _, v in columns] if header else columns[0][1][i] for i in keep.tolist()]
    label_img = None
    if thumbnails is not None:
        imgs = _numpy(thumbnails)
        if imgs.dtype != np.uint8 or imgs.ndim != 4:
            raise ValueError(f"thumbnails must be uint8 (N, C, H, W), got {imgs.dtype} {imgs.shape}")
        imgs = imgs[:, :3] if imgs.shape[1] >= 3 else imgs[:, :1]  # grey, or the first three bands as RGB
        label_img = torch.from_numpy(imgs[keep]).float() / 255.0
        if label_img.shape[2] > label_img.shape[3]:  # torch's sprite grid needs width >= height: pad the sides
            extra = label_img.shape[2] - label_img.shape[3]
            label_img = pad(label_img, (extra // 2, extra - extra // 2))
        h, w = sprite_cell(len(keep), label_img.shape[2], label_img.shape[3])
        if (h, w) != tuple(label_img.shape[2:]):
            label_img = interpolate(label_img, size=(h, w), mode="area")
    log_dir = Path(log_dir)
    target = log_dir / f"{step:05d}" / tag
    if target.is_dir():
        shutil.rmtree(target)  # add_embedding would warn and mix the old files with the new
    config_path = log_dir / "projector_config.pbtxt"
    earlier = _read_config(config_path)
    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_embedding(
            torch.from_numpy(mat[keep]),
            metadata=metadata,
            label_img=label_img,
            global_step=step,
            tag=tag,
            metadata_header=header,
        )
    finally:
        writer.close()
    # add_embedding writes only this writer's embeddings: keep the other tags and steps written before
    config = _read_config(config_path)
    names_now = {e.tensor_name for e in config.embeddings}
    kept = [e for e in earlier.embeddings if e.tensor_name not in names_now]
    if kept:
        merged = ProjectorConfig()
        merged.embeddings.extend([*kept, *config.embeddings])
        atomic_write(config_path, lambda f: f.write(text_format.MessageToString(merged).encode()))
    return config_path


def _read_config(path: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    if path.is_file():
        text_format.Parse(path.read_text(), config)
    return config
