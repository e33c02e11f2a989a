"""``vicreg embed``: the frozen representation of a dataset (images, signals or table rows, as the run's data kind
reads them), written to ``.npy``, ``.npz`` or ``.parquet``.

* ``.npy``: the float32 matrix ``(N, feature_dim)``, rows in the data's order;
* ``.npz``: ``embeddings``, ``labels`` (``-1`` where unlabelled) and ``index``;
* ``.parquet`` (needs ``pip install pyarrow``, or ``pip install 'vicreg[parquet]'``): one row per image with
  ``index``, ``path`` (the file for image folders, null otherwise), ``label`` and ``embedding`` (a fixed-size
  list of float32).

``--tensorboard`` also writes TensorBoard's projector files into ``RUN/tb`` (:func:`vicreg.projector.write_projector`:
the embeddings of a seeded subset, their labels and a sprite of thumbnails from the data kind's
:meth:`~vicreg.build.DataKind.sprite`), for ``tensorboard --logdir RUN/tb`` (Projector tab).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicreg.build import DataArgs, OpenRun, Split, open_run_with
from vicreg.files import atomic_write
from vicreg.probes.features import extract_features
from vicreg.progress import Progress
from vicreg.projector import MAX_PROJECTOR_POINTS, write_projector

__all__ = ["SUFFIXES", "EmbedArgs", "embed_to_file", "tensorboard_projector", "write_embeddings"]

SUFFIXES = (".npy", ".npz", ".parquet")


def _pyarrow() -> Any:
    try:  # optional dependency
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(
            "writing .parquet needs pyarrow: pip install pyarrow (or pip install 'vicreg[parquet]'), "
            "or write .npy / .npz instead"
        ) from err
    return pa, pq


def write_embeddings(
    path: str | os.PathLike[str], embeddings: np.ndarray, labels: np.ndarray, paths: list[str] | None = None
) -> Path:
    """Write ``embeddings`` ``(N, D)`` (and labels, paths) in the format named by the suffix of ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown output format {path.suffix!r} for {path}: use one of {', '.join(SUFFIXES)}")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = np.arange(embeddings.shape[0], dtype=np.int64)
    if suffix == ".npy":
        return atomic_write(path, lambda f: np.save(f, embeddings))
    if suffix == ".npz":
        return atomic_write(path, lambda f: np.savez(f, embeddings=embeddings, labels=labels, index=index))
    pa, pq = _pyarrow()
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "index": pa.array(index),
            "path": pa.array(paths if paths is not None else [None] * len(index), type=pa.string()),
            "label": pa.array(labels.astype(np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1]),
        }
    )
    return atomic_write(path, lambda f: pq.write_table(table, f))


@dataclass(frozen=True, kw_only=True)
class EmbedArgs(DataArgs):
    """Write the frozen representation (backbone output) of every row of a dataset.

    Formats by the suffix of --out: .npy (the float32 matrix N x D), .npz (embeddings, labels, index) or the
    .parquet format (index, path, label, embedding; needs pyarrow). Images are brought to the training views'
    size and normalised as in training; rows keep the data's order.
    """

    out: Path
    """Output file (.npy, .npz or .parquet)."""
    split: str = "train"
    """Split of a named dataset or dataset folder (ignored for .npy/.npz files and image folders)."""
    tensorboard: bool = False
    """Also write TensorBoard's projector files (embeddings, labels, thumbnails of at most 10000 rows, a seeded
    subset) into RUN/tb: tensorboard --logdir RUN/tb, Projector tab."""


def embed_to_file(
    run_or_checkpoint: str | os.PathLike[str], args: EmbedArgs, *, progress: Progress | None = None
) -> tuple[Path, int, int]:
    """Embed ``args.data`` (default: the run's training data) with a run's encoder into ``args.out``; returns
    ``(path, rows, dim)``. ``progress`` says what is being done (default: on stdout)."""
    progress = progress or Progress()
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        raise ValueError(f"unknown output format {out.suffix!r} for {out}: use one of {', '.join(SUFFIXES)}")
    if out.suffix.lower() == ".parquet":
        _pyarrow()  # fail before any work
    progress.stage(f"loading the encoder of {run_or_checkpoint}")
    run = open_run_with(run_or_checkpoint, args)
    enc = run.encoder
    progress.stage(f"loading {run.source} ({args.split})")
    got = run.kind.load_split(run.source, args.split, enc.spec, download=args.download)
    rows = got.data
    progress.stage(f"embedding {len(rows)} rows on {run.device}")
    features = extract_features(
        enc.model.embed,
        rows.rows,
        batch_size=args.batch_size,
        device=run.device,
        mean=enc.mean,
        std=enc.std,
        track=progress.batches("features", len(rows)),
    )
    labels = rows.labels.cpu().numpy() if rows.labels is not None else np.full(len(rows), -1, dtype=np.int64)
    written = write_embeddings(out, features.numpy(), labels, got.paths)
    if args.tensorboard:
        log_dir = tensorboard_projector(run, got, features.numpy(), labels, progress=progress)
        progress.stage(f"projector files in {log_dir}; see them with: tensorboard --logdir {log_dir} (Projector tab)")
    return written, int(features.shape[0]), int(features.shape[1])


def tensorboard_projector(
    run: OpenRun,
    split: Split,
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    max_points: int = MAX_PROJECTOR_POINTS,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Write the projector files of ``embeddings`` (rows of ``split``) into ``RUN/tb``: a seeded subset of at most
    ``max_points`` rows, their labels (class names when known), names (files or row numbers) and thumbnails
    (the data kind's :meth:`~vicreg.build.DataKind.sprite`: images, or a sparkline per signal). Returns
    ``RUN/tb``."""
    n = len(embeddings)
    keep = np.arange(n)
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    if progress is not None:
        progress.stage(f"TensorBoard projector: {len(keep)} of {n} rows with thumbnails")
    classes = list(split.data.classes)
    names = [split.paths[i] for i in keep.tolist()] if split.paths is not None else [str(i) for i in keep.tolist()]
    shown: list[str] | None = None
    if (labels >= 0).any():
        shown = [
            classes[y] if 0 <= y < len(classes) else ("unlabelled" if y < 0 else str(y)) for y in labels[keep].tolist()
        ]
    index = torch.from_numpy(keep)
    thumbnails = run.kind.sprite(split.data.rows[index])
    log_dir = run.run_dir / "tb"
    write_projector(log_dir, embeddings[keep], shown, thumbnails=thumbnails, names=names, max_points=None)
    return log_dir
